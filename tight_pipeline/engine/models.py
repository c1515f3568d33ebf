"""Model specs and loading: SDXL / SD pipelines with an h94-layout IP-Adapter, FLUX with an XLabs-layout one, or none (passthrough).

Weights are only ever read from a local folder or a pre-filled Hugging Face cache: every call passes
``local_files_only=True``. Nothing here downloads.

    spec = resolve_model_spec("path/to/model-folder")   # a folder with model.yaml, a YAML file, or a name
    pipe = load_pipeline(spec)                          # a diffusers pipeline with the adapter loaded

A model folder written by ``make_tiny_model`` is loaded by exactly this code, like real weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tight_pipeline.settings import configs_dir, state_dir

FAMILIES = ("sdxl", "sd", "flux", "passthrough")
DEFAULT_MODEL = "catalog-demo"
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")
RUNTIME_FIELDS = ("max_batch", "vae_batch", "tf32", "channels_last", "compile")  # speed, not results


class ModelError(RuntimeError):
    """A model cannot be resolved or loaded; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a diffusion model and its image adapter live, and how to run them.

    Attributes:
        name: a label for logs, Parquet rows and MLflow.
        family: ``sdxl`` (StableDiffusionXLPipeline), ``sd`` (StableDiffusionPipeline, SD 1.5/2.1) or
            ``flux`` (FluxPipeline, FLUX.1-dev / schnell, with an IP-Adapter in the XLabs layout), or
            ``passthrough`` (no model: decode, resize, write; for measuring and testing the pipeline at scale).
        base: a local diffusers folder, or a Hugging Face repo id already in the local cache.
        adapter: root of the IP-Adapter in the h94/IP-Adapter layout (folder or cached repo id);
            ``None`` runs without an image condition (plain inversion only).
        adapter_subfolder: subfolder holding the weight file, e.g. ``sdxl_models``.
        adapter_weight: weight file name, e.g. ``ip-adapter-plus_sdxl_vit-h.safetensors``.
        image_encoder: image encoder folder; with a ``/`` it is relative to ``adapter``
            (``models/image_encoder``), without one relative to ``adapter/adapter_subfolder``.
            For ``flux``: a folder under ``adapter``, an absolute folder, or a cached repo id
            (XLabs' adapter uses ``openai/clip-vit-large-patch14``).
        resolution: working resolution in pixels (the image area is fitted to resolution**2).
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        allow_pickle: allow pickle ``.bin`` weights; refused by default (they can run code on load).
        variant: diffusers weight variant (``fp16``) or ``None``.

    How to run it (not part of ``digest``: they change speed, not what the model computes beyond float
    tolerance, so changing them never makes a resumed run redo rows):
        max_batch: at most this many latent rows per UNet / transformer call; items of a batch (same preset,
            same working size) are inverted and edited together and split into calls of this size. The
            SDXL UNet's cost per image flattens from batch 8 on an H200 (``docs/gpu.md``).
        vae_batch: at most this many images per VAE encode / decode call (decoding 1024 px is memory-heavy).
        tf32: allow TF32 matmuls and convolutions on CUDA (faster float32, ~1e-3 relative error per op).
            Off by default: inversion accumulates error over every step; bf16/fp16 networks are unaffected.
        channels_last: run the UNet / VAE in channels-last memory format (often faster convolutions on GPUs).
        compile: ``torch.compile`` the UNet / transformer (``""`` = off, or a mode: ``default``,
            ``reduce-overhead``, ``max-autotune``); the first calls at each new batch shape pay the compile.
    """

    name: str
    base: str
    family: str = "sdxl"
    adapter: str | None = None
    adapter_subfolder: str = "sdxl_models"
    adapter_weight: str = "ip-adapter-plus_sdxl_vit-h.safetensors"
    image_encoder: str = "models/image_encoder"
    resolution: int = 1024
    dtype: str = "float32"
    device: str = "auto"
    allow_pickle: bool = False
    variant: str | None = None
    max_batch: int = 8
    vae_batch: int = 4
    tf32: bool = False
    channels_last: bool = False
    compile: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ModelError(f"model {self.name!r}: unknown family {self.family!r}; expected one of {FAMILIES}")
        if self.dtype not in DTYPES:
            raise ModelError(f"model {self.name!r}: unknown dtype {self.dtype!r}; expected one of {DTYPES}")
        if self.device not in DEVICES:
            raise ModelError(f"model {self.name!r}: unknown device {self.device!r}; expected one of {DEVICES}")
        if self.max_batch < 1 or self.vae_batch < 1:
            raise ModelError(f"model {self.name!r}: max_batch and vae_batch must be >= 1")
        if self.compile not in COMPILE_MODES:
            raise ModelError(f"model {self.name!r}: unknown compile mode {self.compile!r}; expected one of {COMPILE_MODES}")
        if not 32 <= self.resolution <= 4096:
            raise ModelError(f"model {self.name!r}: resolution {self.resolution} out of range 32..4096")
        if self.adapter is not None and not self.allow_pickle and not self.adapter_weight.endswith(".safetensors"):
            raise ModelError(
                f"model {self.name!r}: adapter weight {self.adapter_weight!r} is not a .safetensors file; pickle "
                "weights can execute code when loaded. Convert it to safetensors, or set allow_pickle: true "
                "in the model spec if you trust the file."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        """Short stable hash of the spec's settings (paths, dtype, ...); :func:`model_digest` adds the weights."""
        settings = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


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


def _tree_fingerprint(h, label: str, root: Path | None) -> None:
    h.update(f"[{label}]".encode())
    if root is None:
        h.update(b"<unresolved>")
        return
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    for p in files:
        h.update(f"{p.relative_to(root) if p != root else p.name}:{_file_fingerprint(p)};".encode())


def weights_digest(spec: ModelSpec) -> str:
    """Short hash of the weight files ``spec`` loads (base folder, adapter weight, image encoder).

    Together with :attr:`ModelSpec.digest` it identifies the model a row was made with: retraining or swapping
    weights in place changes it, so a re-run redoes rows instead of keeping images of the old model.
    """
    h = hashlib.sha256()
    if spec.family == "passthrough":
        return hashlib.sha256(b"passthrough").hexdigest()[:12]
    _tree_fingerprint(h, "base", _local_root(spec.base))
    if spec.adapter is not None:
        root = _local_root(spec.adapter)
        weight = root / spec.adapter_subfolder / spec.adapter_weight if root is not None else None
        _tree_fingerprint(h, "adapter", weight if weight is not None and weight.exists() else None)
        encoder = None
        if root is not None:
            for candidate in (root / spec.image_encoder, root / spec.adapter_subfolder / spec.image_encoder):
                if candidate.is_dir():
                    encoder = candidate
                    break
        if encoder is None:
            encoder = _local_root(spec.image_encoder)
        _tree_fingerprint(h, "image_encoder", encoder)
    return h.hexdigest()[:12]


def model_digest(spec: ModelSpec) -> str:
    """The spec's settings and its weights' fingerprint in one short hash (Parquet ``model_digest``)."""
    return hashlib.sha256(f"{spec.digest}:{weights_digest(spec)}".encode()).hexdigest()[:12]


def _spec_from_mapping(data: dict[str, Any], relative_to: Path | None, origin: str) -> ModelSpec:
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ModelError(f"{origin}: unknown model spec keys {unknown}; allowed: {sorted(fields)}")
    data = dict(data)
    if relative_to is not None:
        # Paths inside a model.yaml are relative to its folder, so a model folder can be moved as a whole.
        for key in ("base", "adapter"):
            value = data.get(key)
            if value and not os.path.isabs(value) and (relative_to / value).exists():
                data[key] = str((relative_to / value).resolve())
    data.setdefault("name", origin)
    try:
        return ModelSpec(**data)
    except TypeError as exc:
        raise ModelError(f"{origin}: invalid model spec: {exc}") from exc


def resolve_model_spec(ref: str | ModelSpec | None = None, **overrides: Any) -> ModelSpec:
    """Turn ``--model`` into a spec: a folder with ``model.yaml``, a spec YAML file, or a name from
    ``configs/models.yaml``. ``None`` means ``catalog-demo``, the demo model shipped inside the package.
    """
    if isinstance(ref, ModelSpec):
        spec = ref
    else:
        ref = ref or DEFAULT_MODEL
        path = Path(ref).expanduser()
        if path.is_dir():
            yaml_path = path / "model.yaml"
            if not yaml_path.exists():
                raise ModelError(f"model folder {path} has no model.yaml (write one, or pass a spec YAML file)")
            spec = _spec_from_mapping(yaml.safe_load(yaml_path.read_text()) or {}, path, str(path))
        elif path.suffix in (".yaml", ".yml") and path.is_file():
            spec = _spec_from_mapping(yaml.safe_load(path.read_text()) or {}, path.parent, str(path))
        else:
            named = load_named_models()
            if ref not in named:
                raise ModelError(
                    f"unknown model {ref!r}: not a folder with model.yaml, not a spec YAML file, and not one of "
                    f"the names in configs/models.yaml ({', '.join(sorted(named))})"
                )
            spec = named[ref]
    if overrides:
        spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    return spec


def load_named_models() -> dict[str, ModelSpec]:
    """Named specs from ``configs/models.yaml``; ``${TIGHT_PIPELINE_HOME}`` (the state folder) and
    ``${TIGHT_PIPELINE_PACKAGE}`` (the installed ``tight_pipeline`` package) in paths are expanded."""
    package = str(Path(__file__).resolve().parents[1])
    path = configs_dir() / "models.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, data in (raw.get("models") or {}).items():
        data = dict(data)
        for key in ("base", "adapter"):
            if isinstance(data.get(key), str):
                data[key] = data[key].replace("${TIGHT_PIPELINE_HOME}", str(state_dir())).replace("${TIGHT_PIPELINE_PACKAGE}", package)
        data.setdefault("name", name)
        out[name] = _spec_from_mapping(data, None, f"configs/models.yaml:{name}")
    return out


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def pick_device(spec: ModelSpec) -> str:
    import torch

    if spec.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model {spec.name!r} asks for device cuda, but no CUDA device is visible")
    return spec.device


def _missing_hint(what: str, ref: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"{what} {ref!r} is not on this machine (looked in the local folder and the Hugging Face cache at "
        f"{cache}; downloads are disabled). On a machine with access run `hf download {ref}` and copy the "
        "cache, or download the folder and point the model spec at it."
    )


def _load_flux_adapter(pipe, spec: ModelSpec, dtype) -> None:
    """XLabs-layout IP-Adapter for FLUX (diffusers' ``FluxIPAdapterMixin``), image encoder in ``dtype``."""
    adapter_root = Path(spec.adapter).expanduser()
    weight = adapter_root / spec.adapter_subfolder / spec.adapter_weight
    if adapter_root.is_absolute() and not weight.exists():
        raise ModelError(f"model {spec.name!r}: adapter weight {weight} does not exist (XLabs layout: "
                         "<root>/<subfolder>/ip_adapter.safetensors)")
    encoder = spec.image_encoder
    if adapter_root.is_dir() and (adapter_root / encoder).is_dir():
        encoder = str(adapter_root / encoder)
    elif Path(encoder).expanduser().is_absolute() and not Path(encoder).expanduser().is_dir():
        raise ModelError(f"model {spec.name!r}: image encoder folder {encoder} does not exist")
    try:
        pipe.load_ip_adapter(
            spec.adapter, weight_name=spec.adapter_weight, subfolder=spec.adapter_subfolder,
            image_encoder_pretrained_model_name_or_path=encoder, image_encoder_dtype=dtype, local_files_only=True,
        )
    except OSError as exc:
        raise ModelError(
            _missing_hint(f"model {spec.name!r}: IP-Adapter or image encoder", f"{spec.adapter} / {encoder}")
            + f" ({str(exc).splitlines()[0]})"
        ) from exc
    pipe.set_ip_adapter_scale(0.0)


def load_pipeline(spec: ModelSpec):
    """Load the diffusers pipeline of ``spec`` and its IP-Adapter, offline, from safetensors.

    Returns the pipeline on its device, with a DDIM scheduler configured from the model's own scheduler
    config (FLUX keeps its flow-matching scheduler), the IP-Adapter loaded (scale 0 until set) and progress
    bars off.
    """
    import torch
    import diffusers
    import transformers
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    if spec.family == "flux":
        from diffusers import FluxPipeline

        cls = FluxPipeline
    else:
        cls = StableDiffusionXLPipeline if spec.family == "sdxl" else StableDiffusionPipeline
    dtype = torch_dtype(spec.dtype)
    device = pick_device(spec)
    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True, use_safetensors=not spec.allow_pickle)
    if spec.variant:
        kwargs["variant"] = spec.variant
    if spec.family == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    base_path = Path(spec.base).expanduser()
    if base_path.is_absolute() or spec.base.startswith("."):
        if not base_path.is_dir():
            raise ModelError(f"model {spec.name!r}: base folder {base_path} does not exist")
        if not (base_path / "model_index.json").exists():
            raise ModelError(f"model {spec.name!r}: {base_path} is not a diffusers folder (no model_index.json)")
    try:
        pipe = cls.from_pretrained(spec.base, **kwargs)
    except OSError as exc:
        text = str(exc)
        if "safetensors" in text.lower() and not spec.allow_pickle:
            raise ModelError(
                f"model {spec.name!r}: {spec.base} has no safetensors weights for some component ({text.splitlines()[0]}). "
                "Convert them, or set allow_pickle: true if you trust the .bin files."
            ) from exc
        raise ModelError(_missing_hint(f"model {spec.name!r}: base", spec.base) + f" ({text.splitlines()[0]})") from exc
    if spec.family != "flux":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if spec.adapter is not None and spec.family == "flux":
        _load_flux_adapter(pipe, spec, dtype)
    elif spec.adapter is not None:
        adapter_root = Path(spec.adapter).expanduser()
        if adapter_root.is_absolute() and not (adapter_root / spec.adapter_subfolder / spec.adapter_weight).exists():
            raise ModelError(
                f"model {spec.name!r}: adapter weight {adapter_root / spec.adapter_subfolder / spec.adapter_weight} "
                "does not exist (expected the h94/IP-Adapter layout: <root>/<subfolder>/<weight file> and the image "
                "encoder folder beside it)"
            )
        try:
            pipe.load_ip_adapter(
                spec.adapter,
                subfolder=spec.adapter_subfolder,
                weight_name=spec.adapter_weight,
                image_encoder_folder=spec.image_encoder,
                local_files_only=True,
                torch_dtype=dtype,
            )
        except OSError as exc:
            raise ModelError(
                _missing_hint(f"model {spec.name!r}: IP-Adapter", spec.adapter) + f" ({str(exc).splitlines()[0]})"
            ) from exc
        pipe.set_ip_adapter_scale(0.0)
    pipe.to(device)
    if dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)  # the SDXL VAE overflows in fp16
    pipe.set_progress_bar_config(disable=True)
    apply_speed_settings(pipe, spec)
    return pipe


def apply_speed_settings(pipe, spec: ModelSpec) -> None:
    """TF32 policy, channels-last and ``torch.compile`` as the spec asks (see ``ModelSpec``)."""
    import torch

    if torch.cuda.is_available():
        # cuDNN convolutions default to TF32 in PyTorch; the spec decides, for matmuls and convolutions alike.
        torch.backends.cuda.matmul.allow_tf32 = spec.tf32
        torch.backends.cudnn.allow_tf32 = spec.tf32
    net = pipe.transformer if spec.family == "flux" else pipe.unet
    if spec.channels_last and spec.family != "flux":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.compile:
        net.compile(mode=spec.compile, fullgraph=False, dynamic=False)


def cross_attention_layers(unet) -> list[tuple[str, int]]:
    """(processor name, hidden size) of every UNet cross-attention layer, in h94's numbering order."""
    out = []
    for name in unet.attn_processors.keys():
        if name.endswith("attn1.processor") or not name.startswith(("down_blocks", "mid_block", "up_blocks")):
            continue  # self-attention, or the Resampler's own attention once an adapter is loaded
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        out.append((name, hidden))
    return out
