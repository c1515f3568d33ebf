"""Generator of the bad-input corpus: broken files, odd image modes and hostile manifest rows.

    write_corpus("/tmp/corpus")  ->  (manifest_path, {item_id or row key: expected outcome})

Every case is generated here from code (no binary blobs in the repo). An expected outcome is
``("ok", note)`` or ``(status, substring the error must contain)``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(w=96, h=72, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return Image.fromarray((base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) body: a decompression-bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    """A landscape-stored JPEG whose EXIF says 'rotate 90' (orientation 6): upright it is portrait."""
    img = _photo(96, 64, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, "JPEG", exif=exif.tobytes(), quality=90)


def image_files() -> dict[str, bytes]:
    good = _photo()
    jpeg = _save(good, "JPEG", quality=90)
    png = _save(good, "PNG")
    corrupt_png = bytearray(png)
    mid = len(corrupt_png) // 2
    corrupt_png[mid:mid + 64] = b"\x00" * 64
    sixteen = Image.fromarray((np.asarray(good.convert("L"), dtype=np.uint16) * 257)).convert("I;16")
    rgba = good.convert("RGBA")
    rgba.putalpha(Image.new("L", good.size, 128))
    return {
        "good.jpg": jpeg,
        "good.png": png,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "corrupt.png": bytes(corrupt_png),
        "zero.png": b"",
        "page.html": b"<!DOCTYPE html><html><body>Not found</body></html>",
        "notes.txt": b"this is not an image\n",
        "cmyk.jpg": _save(good.convert("CMYK"), "JPEG", quality=90),
        "sixteen.png": _save(sixteen, "PNG"),
        "palette.png": _save(good.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG"),
        "gray.png": _save(good.convert("L"), "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "rotated.jpg": _exif_rotated(),
        "wide.png": _save(_photo(800, 40), "PNG"),
        "tiny.png": _save(_photo(16, 16), "PNG"),
        "bomb.png": _png_header_only(100_000, 100_000),
    }


def write_corpus(folder: str | Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name, data in image_files().items():
        (folder / "img" / name).write_bytes(data)

    def rec(item_id, image, prompt="a product photo", edits=None, **extra):
        return {"item_id": item_id, "image_uri": image if "://" in image else f"img/{image}", "source_prompt": prompt,
                "edits": edits if edits is not None else [{"edit_id": "blue", "prompt": "a blue product photo"}], **extra}

    lines: list[str] = []
    expect: dict[str, tuple[str, str]] = {}

    def add(key, record, outcome):
        lines.append(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
        expect[key] = outcome

    add("good-jpeg", rec("good-jpeg", "good.jpg"), ("ok", ""))
    add("truncated-jpeg", rec("truncated-jpeg", "truncated.jpg"), ("error", "truncated"))
    add("corrupt-png", rec("corrupt-png", "corrupt.png"), ("error", "corrupt"))
    add("zero-byte", rec("zero-byte", "zero.png"), ("error", "empty file"))
    add("html", rec("html", "page.html"), ("error", "HTML"))
    add("text", rec("text", "notes.txt"), ("error", "cannot identify image"))
    add("cmyk", rec("cmyk", "cmyk.jpg"), ("ok", ""))
    add("sixteen-bit", rec("sixteen-bit", "sixteen.png"), ("ok", ""))
    add("palette", rec("palette", "palette.png"), ("ok", ""))
    add("gray", rec("gray", "gray.png"), ("ok", ""))
    add("rgba", rec("rgba", "rgba.png"), ("ok", ""))
    add("exif-rotated", rec("exif-rotated", "rotated.jpg"), ("ok", "upright"))
    add("extreme-aspect", rec("extreme-aspect", "wide.png"), ("error", "aspect ratio"))
    add("tiny", rec("tiny", "tiny.png"), ("error", "smaller than min_side"))
    add("bomb", rec("bomb", "bomb.png"), ("error", "refused before decoding"))
    add("missing-object", rec("missing-object", "does-not-exist.png"), ("error", "does not exist"))
    add("row-17", rec("bad-scheme", "ftp://example.com/a.png"), ("invalid", "scheme 'ftp'"))
    # empty prompts are prompts (the model's empty one), as the method accepts them
    add("empty-prompt", rec("empty-prompt", "good.png", prompt="   "), ("ok", ""))
    add("long-prompt", rec("long-prompt", "good.png", prompt="a mug " * 120), ("ok", "tokens"))
    add("non-latin", rec("non-latin", "good.png", prompt="赤いマグカップ, кружка",
                         edits=[{"edit_id": "ja", "prompt": "青いマグカップ"}]), ("ok", ""))
    add("row-21", rec("good-jpeg", "good.png"), ("invalid", "duplicate item_id"))
    add("row-22", rec("../escape", "good.png"), ("invalid", "not a safe id"))
    add("row-23", rec("slash-edit", "good.png", edits=[{"edit_id": "a/b", "prompt": "x"}]), ("invalid", "not a safe id"))
    add("row-24", rec("nul\x00id", "good.png"), ("invalid", "not a safe id"))
    add("row-25", rec("%2e%2e", "good.png"), ("invalid", "not a safe id"))
    add("row-26", rec("unknown-preset", "good.png", preset="ultra"), ("invalid", "unknown preset"))
    add("row-27", '{"item_id": "broken", "image_uri": ', ("invalid", "malformed JSON"))
    add("empty-edit", rec("empty-edit", "good.png", edits=[{"edit_id": "e", "prompt": ""}]), ("ok", "negative"))
    add("row-29", rec("http-url", "http://127.0.0.1:9/a.png"), ("invalid", "scheme 'http'"))
    # not bad input: an item of its own preset with automatic strength (its rows carry the chosen scale)
    add("auto-strength", rec("auto-strength", "good.png", preset="smoke@auto"), ("ok", "auto"))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest, expect
