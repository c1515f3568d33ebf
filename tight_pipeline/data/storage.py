"""Object storage through fsspec (file://, s3://, gs://, memory://, plain paths): safe image decoding,
deterministic output keys, atomic writes, credential redaction.

Credentials are never passed in code or config: s3fs/gcsfs read them from the environment or profiles
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...).
"""

from __future__ import annotations

import io
import functools
import os
import re
import time
import uuid
import warnings
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_SCHEMES = ("file", "s3", "gs", "gcs", "memory")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|SESSION_KEY|CREDENTIAL)", re.I)


class StorageError(RuntimeError):
    """An object cannot be read or written (after retries)."""


class ImageDecodeError(ValueError):
    """The bytes are not an image this pipeline accepts; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 40_000_000  # refuse before decoding (decompression bombs)
    min_side: int = 32
    max_bytes: int = 100 * 1024 * 1024


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def file_roots() -> tuple[str, ...]:
    """Folders local reads are confined to when ``TIGHT_PIPELINE_FILE_ROOTS`` is set (``:``-separated);
    empty = no confinement (a person's own machine). Set it when running as a shared service."""
    return _roots(os.environ.get("TIGHT_PIPELINE_FILE_ROOTS", ""))


@functools.lru_cache(maxsize=8)
def _roots(raw: str) -> tuple[str, ...]:  # cached: checked once per manifest row
    return tuple(os.path.realpath(r) for r in raw.split(":") if r)


def check_scheme(url: str, allowed: tuple[str, ...] = DEFAULT_SCHEMES, roots: tuple[str, ...] | None = None) -> None:
    """Refuse URL schemes outside ``allowed`` and, with ``TIGHT_PIPELINE_FILE_ROOTS``, local paths outside it
    (``roots``: ``file_roots()`` read once by a caller that checks many URLs)."""
    scheme = scheme_of(url)
    if scheme not in allowed:
        raise StorageError(f"URL scheme {scheme!r} of {redact(url)!r} is not allowed (allowed: {', '.join(allowed)})")
    roots = file_roots() if roots is None else roots
    if scheme == "file" and roots:
        path = os.path.realpath(url.split("://", 1)[1] if "://" in url else url)
        if not any(path == r or path.startswith(r + os.sep) for r in roots):
            raise StorageError(f"local path {url!r} is outside the allowed roots ({', '.join(roots)})")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def check_id(value: object, what: str) -> str:
    """An id used in output keys: letters, digits, ``.``, ``_``, ``-``; no path tricks."""
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a safe id (1-128 chars of letters, digits, '.', '_', '-', "
            "starting with a letter or digit, no '..')"
        )
    return value


def output_key(output: str, preset_hash: str, item_id: str, edit_id: str) -> str:
    """``<output>/<preset-hash>/<item_id>/<edit_id>.png`` (ids are checked by ``check_id`` first)."""
    return join(output, preset_hash, check_id(item_id, "item_id"), check_id(edit_id, "edit_id") + ".png")


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def with_retries(fn, what, attempts: int = 8, base_delay: float = 0.5, max_delay: float = 8.0):
    """Call ``fn`` with exponential backoff on I/O errors (object stores hiccup, servers restart); errors no retry
    mends (not found, a file where a folder must be, permission refused) are raised at once.

    ``what`` names the operation in the final error: a string, or a callable giving it (built only on failure:
    redacting a URL costs more than writing a small PNG)."""
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError):
            raise  # no retry mends these: a missing object, a file where a folder must be, a refused credential
        except (OSError, TimeoutError, ConnectionError) as exc:  # botocore errors subclass neither: below
            last = exc
        except Exception as exc:  # noqa: BLE001 - s3fs/aiobotocore raise their own types for network errors
            if type(exc).__module__.split(".")[0] not in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs"):
                raise
            last = exc
        if attempt < attempts - 1:
            time.sleep(min(max_delay, base_delay * 2**attempt))
    raise StorageError(f"{what() if callable(what) else what}: {redact(str(last))} (after {attempts} attempts)") from last


def open_read(url: str):
    """A buffered binary file open for streaming reads (opening is retried; reading streams as it goes)."""
    fs, path = _fs(url)
    return with_retries(lambda: fs.open(path, "rb", block_size=8 << 20), lambda: f"opening {redact(url)}")


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return bool(with_retries(lambda: fs.exists(path), lambda: f"checking {redact(url)}"))


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    def _read():
        fs, path = _fs(url)
        if max_bytes is not None:
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise ImageDecodeError(f"object is {size} bytes, over the {max_bytes}-byte limit")
        with fs.open(path, "rb") as f:
            return f.read()

    return with_retries(_read, lambda: f"reading {redact(url)}")


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write so that a reader never sees a half-written object.

    Local files: a temporary file in the same folder, then ``os.replace``. Object stores: a single PUT,
    which they publish atomically.
    """

    def _write():
        fs, path = _fs(url)
        if scheme_of(url) == "file":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)

    with_retries(_write, lambda: f"writing {redact(url)}")


def remove(url: str, recursive: bool = False) -> None:
    """Delete an object (or, with ``recursive``, a prefix); a missing one is not an error."""
    fs, path = _fs(url)
    try:
        with_retries(lambda: fs.rm(path, recursive=recursive), lambda: f"removing {redact(url)}")
    except FileNotFoundError:
        pass


PNG_LEVEL = 6  # Pillow's default; runs set their own (JobConfig.png_level)


def encode_png(image: Image.Image, level: int = PNG_LEVEL) -> bytes:
    """PNG bytes at zlib ``level`` (Pillow releases the GIL while it compresses: threads encode in parallel)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@dataclass(frozen=True)
class Photo:
    """A decoded photo: ``image`` what the model sees (upright 8-bit RGB, transparency composited on white);
    ``pixels`` what outputs are composited on: the upright photo's own 8-bit pixels, (H, W, 3), or (H, W, 4) with
    its alpha channel (RGB as stored, not composited). 16-bit photos are reduced to 8 bits (a note says so)."""

    image: Image.Image
    pixels: np.ndarray
    notes: list[str]


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> tuple[Image.Image, list[str]]:
    """Bytes → an upright 8-bit RGB image and notes about conversions (``decode_photo``)."""
    photo = decode_photo(data, limits)
    return photo.image, photo.notes


def decode_mask(data: bytes, size: tuple[int, int], limits: ImageLimits = ImageLimits(), what: str = "mask"):
    """Bytes of a mask image (white = may change) → bool (h, w), checked against the photo's upright ``size``."""
    if not data:
        raise ImageDecodeError(f"{what}: empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > limits.max_pixels:
            raise ImageDecodeError(f"{what}: {img.width}x{img.height} exceeds max_pixels {limits.max_pixels}")
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{what}: cannot decode ({type(exc).__name__}: {exc})") from None
    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return mask_from_image(img, size, what)


def mask_from_image(image: Image.Image, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A mask image (white = may change; any mode, upright) → bool (h, w); ``ImageDecodeError`` unless its size is
    the photo's upright ``size`` (w, h): a mask drawn for another size or orientation would keep the wrong pixels,
    so it is refused rather than stretched. Transparent pixels of a mask with alpha are "keep"."""
    if image.size != tuple(size):
        raise ImageDecodeError(f"{what} is {image.width}x{image.height}, the photo is {size[0]}x{size[1]} (after its "
                               "EXIF orientation): a mask must have the photo's size")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        values = np.where(rgba[..., 3] > 0, rgba[..., :3].mean(-1), 0.0)
    else:
        arr = np.asarray(image)
        values = arr.astype(np.float64) / (257.0 if arr.dtype == np.uint16 or arr.max(initial=0) > 255 else 1.0)
        if values.ndim == 3:
            values = values.mean(-1)
    return values >= 128


def decode_photo(data: bytes, limits: ImageLimits = ImageLimits()) -> Photo:
    """Bytes → a ``Photo``, or ``ImageDecodeError`` naming the cause.

    The pixel count is checked from the header *before* decoding. EXIF orientation is applied; CMYK,
    16-bit, palette, grayscale and alpha images are converted for the model (alpha composited on white).
    """
    notes: list[str] = []
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(f"file is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        head = data[:64].lstrip().lower()
        kind = "HTML" if head.startswith((b"<!doctype", b"<html")) else "not a recognised image format"
        if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
            raise ImageDecodeError(f"refused before decoding: {exc}") from None
        raise ImageDecodeError(f"cannot identify image ({kind})") from None
    w, h = img.size
    if w * h > limits.max_pixels:
        raise ImageDecodeError(f"{w}x{h} = {w * h} pixels exceeds max_pixels {limits.max_pixels} (refused before decoding)")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated {img.format or 'image'} data: {exc}") from None
    orientation = img.getexif().get(0x0112, 1)
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
        notes.append(f"applied EXIF orientation {orientation}")
    mode = img.mode
    own = None  # the photo's own pixels when the model's image differs from them (alpha)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr / top * 255).round().clip(0, 255).astype(np.uint8), "L")
        notes.append(f"converted {mode} to 8-bit")
    if mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        own = np.asarray(rgba)
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
        notes.append("composited transparency on white")
    if img.mode != "RGB":
        if mode not in ("RGB", "P", "RGBA"):
            notes.append(f"converted {mode} to RGB")
        img = img.convert("RGB")
    if min(img.size) < limits.min_side:
        raise ImageDecodeError(f"image is {img.width}x{img.height}, smaller than min_side {limits.min_side} px")
    return Photo(img, own if own is not None else np.asarray(img), notes)


def browser_url(uri: str, expires_s: int | None = None) -> str | None:
    """A URL a browser can open for ``uri``: itself for http(s); a presigned URL for an object store when
    ``TIGHT_PIPELINE_PRESIGN_S`` (or ``expires_s``) is > 0 (it carries the access key *id* and a signature,
    never the secret); else ``None`` (shown as a path)."""
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        return uri
    seconds = int(os.environ.get("TIGHT_PIPELINE_PRESIGN_S", "0") or 0) if expires_s is None else expires_s
    if seconds <= 0 or scheme not in ("s3", "gs", "gcs"):
        return None
    fs, path = _fs(uri)
    try:
        return with_retries(lambda: fs.sign(path, expiration=seconds), lambda: f"presigning {redact(uri)}")
    except NotImplementedError:
        return None


def redact(text: str) -> str:
    """Remove credential values found in the environment and ``user:password@`` parts of URLs."""
    if not isinstance(text, str):
        text = str(text)
    for key, value in os.environ.items():
        if value and len(value) >= 4 and _SECRET_ENV.search(key) and value in text:
            text = text.replace(value, "***")
    return re.sub(r"://[^/@\s:]+:[^/@\s]+@", "://***@", text)
