"""Fingerprints of the weights a spec loads: with the spec's settings they name the model a row was made with
(Parquet ``model_digest``), so retrained weights in the same folder are never taken for the old ones."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from tight_pipeline.method.specs import ModelError, ModelSpec


class WeightsNotFound(ModelError):
    """A spec's weights are not on this machine (nor in its Hugging Face cache): no digest can be made here."""

_FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole
_SAMPLE_BYTES, _SAMPLES = 64 << 10, 32  # larger ones: head, tail and 30 evenly spaced 64 KiB windows
_fingerprints: dict[tuple, str] = {}


def _file_fingerprint(path: Path) -> str:
    """sha256 of a weight file: whole when <= 64 MiB, else sampled (size + 32 windows of 64 KiB).

    Cached per (path, size, mtime) in this process. A retrain or fine-tune rewrites every window we read, so a
    changed model is caught without reading an SDXL UNet's 5 GB.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _fingerprints:
        return _fingerprints[key]
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        if st.st_size <= _FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            last = st.st_size - _SAMPLE_BYTES
            for i in range(_SAMPLES):
                f.seek(last * i // (_SAMPLES - 1))
                h.update(f.read(_SAMPLE_BYTES))
    _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


def _local_root(ref: str) -> Path | None:
    """A local folder/file for ``ref``: itself, or its snapshot in the Hugging Face cache (never downloads)."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a repo id): the load will say so
        return None


def _tree_fingerprint(h, label: str, root: Path | None, missing: list[str]) -> None:
    h.update(f"[{label}]".encode())
    if root is None:
        missing.append(label)
        return
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    for p in files:
        h.update(f"{p.relative_to(root) if p != root else p.name}:{_file_fingerprint(p)};".encode())


def weights_digest(spec: ModelSpec) -> str:
    """Short hash of the weight files ``spec`` loads (base folder, adapter weight, image encoder, CLIP).

    Together with :attr:`ModelSpec.digest` it identifies the model a row was made with: retraining or swapping
    weights in place changes it, so a re-run redoes rows instead of keeping images of the old model.
    Raises ``WeightsNotFound`` naming what is missing: a digest of weights that are not here would name no model
    (a driver without the weights cache must not fingerprint nothing; ``job.resolve_digest`` asks a worker).
    """
    h = hashlib.sha256()
    missing: list[str] = []
    if not spec.traits.weights:
        return hashlib.sha256(b"passthrough").hexdigest()[:12]
    _tree_fingerprint(h, "base", _local_root(spec.base), missing)
    if spec.adapter is not None:
        root = _local_root(spec.adapter)
        weight = root / spec.adapter_subfolder / spec.adapter_weight if root is not None else None
        _tree_fingerprint(h, "adapter", weight if weight is not None and weight.exists() else None, missing)
        encoder = None
        if root is not None:
            for candidate in (root / spec.image_encoder, root / spec.adapter_subfolder / spec.image_encoder):
                if candidate.is_dir():
                    encoder = candidate
                    break
        if encoder is None:
            encoder = _local_root(spec.image_encoder)
        _tree_fingerprint(h, "image_encoder", encoder, missing)
    if spec.clip is not None:  # the auto-strength judge: another CLIP changes which scale an edit keeps
        _tree_fingerprint(h, "clip", _local_root(spec.clip), missing)
    if missing:
        where = {"base": spec.base, "adapter": spec.adapter, "image_encoder": spec.image_encoder, "clip": spec.clip}
        raise WeightsNotFound(f"model {spec.name!r}: weights not found on {socket.gethostname()}: "
                              + ", ".join(f"{m} ({where[m]})" for m in missing)
                              + " (a local folder, or a repo id already in the Hugging Face cache at HF_HOME)")
    return h.hexdigest()[:12]


def model_digest(spec: ModelSpec) -> str:
    """The spec's settings and its weights' fingerprint in one short hash (Parquet ``model_digest``)."""
    return hashlib.sha256(f"{spec.digest}:{weights_digest(spec)}".encode()).hexdigest()[:12]
