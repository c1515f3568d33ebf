"""Manifests: which product photos to edit, and how. Read with fsspec from any URL, in JSONL, CSV or Parquet.

One record per product photo:

    {"item_id": "mug-001",                       # required; letters, digits, . _ - (used in output keys)
     "image_uri": "s3://bucket/photos/mug-001.jpg",  # required; any allowed fsspec URL, or a path relative
                                                 #   to the manifest's folder
     "source_prompt": "a white ceramic mug",     # required; describes the photo as it is ("" = the model's
                                                 #   empty prompt, as for an empty edit prompt)
     "edits": [{"edit_id": "blue", "prompt": "a blue ceramic mug"}],   # list form (an edit may add its own
                                                 #   "mask_uri" and "region": studio | whole | auto | mask), and/or
     "locales": {"de-DE": "a white ceramic mug on a Christmas table"}, # locale -> prompt (edit_id = locale)
     "mask_uri": "masks/mug-001.png",            # optional; where the edits may change the photo (white = may
                                                 #   change; the photo's size after EXIF orientation); outside
                                                 #   it the output keeps the photo's own pixels
     "preset": "faithful",                       # optional; overrides the run's preset for this item
     "metadata": {"sku": "123"},                 # optional; passed through to the output (as are
                                                 #   any other columns)
     "variants": {"n": 2, "styles": "seasonal"}} # optional, variant jobs only: this item's count and style
                                                 #   set (a name in configs/variants.yaml, or a list of phrases)

In a variant job (``tight-pipeline variants``) an item's edits are its variants (``edits``/``locales`` are
not needed and are ignored): see ``tight_pipeline.data.variants``.

In CSV, ``edits``, ``locales`` and ``metadata`` hold JSON text. Validation never stops at the first problem:
every bad record becomes an ``InvalidRow`` with its 1-based row number and the reason, and the run goes on
with the good ones. A manifest that cannot be read at all, or whose header lacks a required column, raises
``ManifestError`` before any model is loaded.

A manifest is one file or a prefix ending in ``/`` (every ``.jsonl``/``.csv``/``.parquet`` file under it, in
name order; rows are numbered across the files). ``iter_manifest`` streams it in chunks of validated items —
memory is bounded by the chunk, plus one entry per item id to find duplicates — and ``read_manifest`` collects
the chunks (small manifests, tests).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import pandas as pd

from tight_pipeline.data import storage
from tight_pipeline.data.variants import VariantRequest, item_request

REQUIRED = ("item_id", "image_uri", "source_prompt")
KNOWN = REQUIRED + ("edits", "locales", "preset", "metadata", "variants", "mask_uri")
REGIONS = ("whole", "auto", "mask", "studio")
MAX_PROMPT_CHARS = 4000


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (unreadable, unknown format, missing columns)."""


@dataclass(frozen=True)
class Edit:
    edit_id: str
    prompt: str
    mask_uri: str | None = None  # this edit's own mask (else the item's)
    region: str | None = None  # studio | whole | auto | mask (None: "mask" when a mask is given, else the preset's)


@dataclass(frozen=True)
class Item:
    row: int
    item_id: str
    image_uri: str
    source_prompt: str
    edits: tuple[Edit, ...]
    preset: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    mask_uri: str | None = None  # where the item's edits may change the photo

    def request_digest(self, edit: Edit) -> str:
        """What ``edit`` asks of this item, as 16 hex digits: ``request_digest`` of its photo URI, source prompt,
        edit prompt, mask (its own, else the item's) and region."""
        return request_digest(self.image_uri, self.source_prompt, edit.prompt, edit.mask_uri or self.mask_uri,
                              edit.region)

    def mask_for(self, edit: Edit) -> str | None:
        """The mask ``edit`` reads: its own, else the item's, when its region is a mask (given, or by default when
        there is a mask); None for ``auto`` / ``whole`` and for edits without a mask."""
        uri = edit.mask_uri or self.mask_uri
        return uri if (edit.region or "mask") == "mask" else None

    def to_json(self) -> str:
        return json.dumps(
            {
                "row": self.row,
                "item_id": self.item_id,
                "image_uri": self.image_uri,
                "source_prompt": self.source_prompt,
                "edits": [[e.edit_id, e.prompt, e.mask_uri, e.region] for e in self.edits],
                "preset": self.preset,
                "metadata": self.metadata,
                "mask_uri": self.mask_uri,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Item":
        d = json.loads(text)
        return cls(d["row"], d["item_id"], d["image_uri"], d["source_prompt"],
                   tuple(Edit(*e) for e in d["edits"]), d["preset"], d["metadata"], d.get("mask_uri"))


def request_digest(image_uri: str, source_prompt: str, prompt: str, mask_uri: str | None, region: str | None) -> str:
    """16 hex digits (blake2b, the same in every process and version) of everything a manifest says about one
    edit besides its ids: stored on its rows, so that resume redoes an edit whose prompt, mask, photo URI or region
    changed under the same ids (``scores.done_keys``). The photo's and mask's *bytes* are not in it (a file
    replaced at the same URI is not seen by the plan): ``--recheck-photos`` compares those."""
    text = "\x00".join((image_uri, source_prompt, prompt, mask_uri or "\x01", region or "\x01"))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class InvalidRow:
    row: int
    item_id: str | None
    reason: str

    def message(self) -> str:
        who = f"item {self.item_id!r}" if self.item_id else "item without a usable item_id"
        return f"manifest row {self.row} ({who}): {self.reason}"


@dataclass(frozen=True)
class Manifest:
    uri: str
    digest: str  # sha256 of the manifest bytes
    items: tuple[Item, ...]
    invalid: tuple[InvalidRow, ...]

    @property
    def n_rows(self) -> int:
        return len(self.items) + len(self.invalid)


def _record_chunks(f, fmt: str, chunk_rows: int, first_row: int = 1) -> Iterator[list[tuple[int, dict | str]]]:
    """Chunks of (row number, record or parse error text) read from the binary file ``f``."""
    row = first_row - 1
    if fmt == "jsonl":
        out: list = []
        for raw in f:
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            row += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append((row, f"malformed JSON line: {exc.msg} at column {exc.colno}"))
            else:
                out.append((row, rec if isinstance(rec, dict) else f"line is JSON {type(rec).__name__}, not an object"))
            if len(out) >= chunk_rows:
                yield out
                out = []
        if out:
            yield out
        return
    if fmt == "csv":
        frames = pd.read_csv(f, dtype=str, keep_default_na=False, chunksize=min(chunk_rows, 1 << 20))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        frames = (b.to_pandas() for b in pq.ParquetFile(f).iter_batches(batch_size=min(chunk_rows, 1 << 20)))
    else:
        raise ManifestError(f"unknown manifest format {fmt!r}")
    for frame in frames:
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise ManifestError(f"manifest header lacks required column(s) {missing}; found {list(frame.columns)}")
        recs = frame.to_dict("records")
        yield [(row + 1 + i, {k: _plain(v) for k, v in rec.items()}) for i, rec in enumerate(recs)]
        row += len(recs)


def _plain(value: Any) -> Any:
    """numpy/pyarrow values from Parquet → plain Python."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def _maybe_json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not valid JSON ({exc.msg})") from None
    return value


def _check_prompt(value: Any, what: str) -> str:
    """The prompt, or "" for an empty (or all-blank) one: the model's empty prompt, which the method accepts
    (zero text embeddings on SDXL) - an unconditioned inversion, or an edit guided by the image alone."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, got {type(value).__name__}")
    if not value.strip():
        return ""
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} is {len(value)} characters, over the {MAX_PROMPT_CHARS}-character limit")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


def _edits(rec: dict, resolve=lambda uri: uri) -> tuple[Edit, ...]:
    """The record's edits; ``resolve`` turns an edit's ``mask_uri`` into a checked URL."""
    edits: list[Edit] = []
    raw = _maybe_json(rec.get("edits"), "edits")
    if raw is not None:
        if isinstance(raw, dict):
            raw = [{"edit_id": k, "prompt": v} for k, v in raw.items()]
        if not isinstance(raw, list):
            raise ValueError("edits must be a list of {edit_id, prompt}")
        for i, e in enumerate(raw):
            if not isinstance(e, dict) or "edit_id" not in e or "prompt" not in e:
                raise ValueError(f"edits[{i}] must be an object with edit_id and prompt")
            mask = e.get("mask_uri") or None
            if mask is not None and not isinstance(mask, str):
                raise ValueError(f"edits[{i}].mask_uri must be a string")
            region = e.get("region") or None
            if region is not None and region not in REGIONS:
                raise ValueError(f"edits[{i}].region {region!r} is not one of {', '.join(REGIONS)}")
            edits.append(Edit(storage.check_id(e["edit_id"], f"edits[{i}].edit_id"),
                              _check_prompt(e["prompt"], f"edits[{i}].prompt"),
                              resolve(mask) if mask else None, region))
    locales = _maybe_json(rec.get("locales"), "locales")
    if locales is not None:
        if not isinstance(locales, dict):
            raise ValueError("locales must be an object mapping locale to prompt")
        for loc, prompt in locales.items():
            edits.append(Edit(storage.check_id(loc, "locale"), _check_prompt(prompt, f"locales[{loc!r}]")))
    if not edits:
        raise ValueError("no edits: give `edits` and/or `locales`")
    seen: set[str] = set()
    for e in edits:
        if e.edit_id in seen:
            raise ValueError(f"edit_id {e.edit_id!r} appears twice")
        if e.edit_id in ("reconstruction", "input"):
            raise ValueError(f"edit_id {e.edit_id!r} is reserved")
        seen.add(e.edit_id)
    return tuple(edits)


def _resolve_uri(image_uri: str, manifest_uri: str, allowed: tuple[str, ...], roots: tuple[str, ...] | None = None) -> str:
    if "://" not in image_uri and not image_uri.startswith("/"):
        base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
        image_uri = storage.join(base, image_uri)
    storage.check_scheme(image_uri, allowed, roots)
    return image_uri


class _Validator:
    """Turns records into ``Item`` / ``InvalidRow``; remembers every item id to refuse duplicates."""

    def __init__(self, uri: str, known_presets: set[str] | None, allowed_schemes: tuple[str, ...],
                 variants: "VariantRequest | None" = None):
        self.uri, self.known_presets, self.allowed = uri, known_presets, allowed_schemes
        self.variants = variants
        self.first_seen: dict[str, int] = {}
        self.roots = storage.file_roots()

    def check(self, records: list[tuple[int, dict | str]], source_uri: str) -> tuple[list[Item], list[InvalidRow]]:
        items: list[Item] = []
        invalid: list[InvalidRow] = []
        for row, rec in records:
            if isinstance(rec, str):
                invalid.append(InvalidRow(row, None, rec))
                continue
            raw_id = rec.get("item_id")
            shown_id = raw_id if isinstance(raw_id, str) else None
            try:
                items.append(self.item(row, rec, source_uri))
            except (ValueError, storage.StorageError) as exc:
                invalid.append(InvalidRow(row, shown_id, str(exc)))
        return items, invalid

    def item(self, row: int, rec: dict, source_uri: str) -> Item:
        # an empty source prompt is a prompt (the model's empty one); an absent one is a missing field
        missing = [c for c in REQUIRED if rec.get(c) is None or (c != "source_prompt" and rec.get(c) == "")]
        if missing:
            raise ValueError(f"missing required field(s) {missing}")
        item_id = storage.check_id(rec.get("item_id"), "item_id")
        if item_id in self.first_seen:
            raise ValueError(f"duplicate item_id (first seen at row {self.first_seen[item_id]})")
        self.first_seen[item_id] = row
        if not isinstance(rec["image_uri"], str):
            raise ValueError("image_uri must be a string")
        image_uri = _resolve_uri(rec["image_uri"], source_uri, self.allowed, self.roots)
        preset = rec.get("preset") or None
        if preset is not None and self.known_presets is not None and preset.split("@")[0] not in self.known_presets:
            raise ValueError(f"unknown preset {preset!r} (known: {', '.join(sorted(self.known_presets))})")
        metadata = _maybe_json(rec.get("metadata"), "metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be an object")
        extra = {k: v for k, v in rec.items() if k not in KNOWN and v not in (None, "")}
        source_prompt = _check_prompt(rec["source_prompt"], "source_prompt")
        mask_uri = rec.get("mask_uri") or None
        if mask_uri is not None and not isinstance(mask_uri, str):
            raise ValueError("mask_uri must be a string")
        mask_uri = _resolve_uri(mask_uri, source_uri, self.allowed, self.roots) if mask_uri else None
        if self.variants is None:
            edits = _edits(rec, lambda uri: _resolve_uri(uri, source_uri, self.allowed, self.roots))
            for e in edits:
                if e.region == "mask" and not (e.mask_uri or mask_uri):
                    raise ValueError(f"edit {e.edit_id!r} has region 'mask' but neither it nor the item has a mask_uri")
            return Item(row, item_id, image_uri, source_prompt, edits, preset, {**extra, **metadata}, mask_uri)
        request = item_request(self.variants, _plain(rec.get("variants")))
        edits = tuple(Edit(e, _check_prompt(p, "variant prompt"))
                      for e, p in request.edits(item_id, source_prompt, {**extra, **metadata}))
        return Item(row, item_id, image_uri, source_prompt, edits, preset,
                    {**extra, **metadata, "variants": request.metadata(item_id)}, mask_uri)



@dataclass(frozen=True)
class ManifestChunk:
    items: list[Item]
    invalid: list[InvalidRow]


def manifest_files(uri: str, allowed_schemes: tuple[str, ...] = storage.DEFAULT_SCHEMES) -> list[str]:
    """The files of a manifest: ``uri`` itself, or every manifest file under a prefix ending in ``/``."""
    import fsspec

    storage.check_scheme(uri, allowed_schemes)
    if not uri.endswith("/"):
        detect_format(uri)
        return [uri]
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        found = storage.with_retries(lambda: fs.find(path), "listing the manifest prefix")
    except FileNotFoundError:
        found = []
    proto = uri.split("://", 1)[0] + "://" if "://" in uri and not uri.startswith("file://") else ""
    files = sorted(proto + p if proto and "://" not in p else p for p in found
                   if p.lower().endswith((".jsonl", ".ndjson", ".json", ".csv", ".parquet")))
    if not files:
        raise ManifestError(f"manifest prefix {storage.redact(uri)!r} holds no .jsonl, .csv or .parquet files")
    return files


def iter_manifest(
    uri: str,
    known_presets: set[str] | None = None,
    allowed_schemes: tuple[str, ...] = storage.DEFAULT_SCHEMES,
    chunk_rows: int = 50_000,
    digest: "hashlib._Hash | None" = None,
    variants: VariantRequest | None = None,
) -> Iterator[ManifestChunk]:
    """Validated chunks of a manifest (one file or a prefix), streamed; ``digest`` (a hashlib object), if given,
    is fed every byte read; ``variants``: a variant job's request (items' edits are their variants).
    Raises ``ManifestError`` when a file cannot be read or lacks required columns."""
    validator = _Validator(uri, known_presets, allowed_schemes, variants)
    row = 0
    for file_uri in manifest_files(uri, allowed_schemes):
        fmt = detect_format(file_uri)
        try:
            with storage.open_read(file_uri) as raw:
                f = _Hashing(raw, digest) if digest is not None else raw
                for records in _record_chunks(f, fmt, chunk_rows, row + 1):
                    row = records[-1][0] if records else row
                    items, invalid = validator.check(records, file_uri)
                    yield ManifestChunk(items, invalid)
        except FileNotFoundError:
            raise ManifestError(f"manifest {storage.redact(file_uri)!r} does not exist") from None
        except ManifestError:
            raise
        except storage.StorageError as exc:
            raise ManifestError(str(exc)) from exc
        except (ValueError, OSError) as exc:
            raise ManifestError(f"manifest {storage.redact(file_uri)!r} cannot be parsed as {fmt}: {exc}") from exc


class _Hashing:
    """A binary file wrapper that feeds what is read to a hash (lines or blocks)."""

    def __init__(self, f, digest):
        self.f, self.digest = f, digest

    def __iter__(self):
        for line in self.f:
            self.digest.update(line)
            yield line

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)


def detect_format(uri: str) -> str:
    lower = uri.lower().split("?")[0]
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
        if lower.endswith(suffix):
            return fmt
    raise ManifestError(f"cannot tell the manifest format of {storage.redact(uri)!r}: use .jsonl, .csv or .parquet")


def read_manifest(
    uri: str,
    known_presets: set[str] | None = None,
    allowed_schemes: tuple[str, ...] = storage.DEFAULT_SCHEMES,
    variants: VariantRequest | None = None,
) -> Manifest:
    """Read and validate a whole manifest into memory (small manifests; jobs stream with ``iter_manifest``).
    Raises ``ManifestError`` only when nothing in it can be used."""
    digest = hashlib.sha256()
    items: list[Item] = []
    invalid: list[InvalidRow] = []
    for chunk in iter_manifest(uri, known_presets, allowed_schemes, digest=digest, variants=variants):
        items += chunk.items
        invalid += chunk.invalid
    return Manifest(uri, digest.hexdigest(), tuple(items), tuple(invalid))
