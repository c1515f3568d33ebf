"""Model specs: what ``--model`` names (a folder with model.yaml, a spec YAML file, or a name in configs/models.yaml).

    spec = resolve_model_spec("path/to/model-folder")
    spec.digest        # 12 hex chars over the settings that change results (not the speed switches)

Loading the weights is ``models.py``; fingerprinting them is ``fingerprints.py``.
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

@dataclass(frozen=True)
class Family:
    """What the code outside a family's own engine and loader may know of it (``ModelSpec.traits``): nothing else
    compares a family's name (the engines themselves are in ``method/factory.py``'s registry)."""

    default_preset: str = "balanced"  # what a run without --preset gets
    weights: bool = True  # has weight files to fingerprint (passthrough: none)
    lora: bool = False  # a LoRA fuses into its UNet
    ledits: bool = False  # LEDITS++ (diffusers' SDXL pipeline) runs on its weights
    separate_edit_pass: bool = False  # edits always run their own denoising pass (FLUX: true CFG per edit)


FAMILY_TRAITS = {
    "sdxl": Family(lora=True, ledits=True),
    "sd": Family(lora=True),
    "flux": Family(default_preset="flux-balanced", separate_edit_pass=True),
    "passthrough": Family(weights=False),
}
FAMILIES = tuple(FAMILY_TRAITS)
DEFAULT_MODEL = "catalog-demo"
DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")
# ``scheduler``: the diffusers scheduler class a pipeline is loaded with (its config from the model's folder) —
# what the model's noise levels and timestep spacing are read from; the update rule is the preset's ``sampler``.
SCHEDULERS = ("ddim", "euler_ancestral", "euler", "lcm")
SPACINGS = ("leading", "trailing", "linspace")
# Fields added later and the value at which each is left out of the digest (the digests of older specs stay).
_OMITTED_FROM_DIGEST = {"clip": None, "scheduler": None, "timestep_spacing": None, "lora": None, "lora_scale": 1.0,
                        "engine": None}
RUNTIME_FIELDS = ("max_batch", "vae_batch", "tf32", "channels_last", "compile", "hold_s")  # speed, not results


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
        clip: a local ``CLIPModel`` folder (with its processor) shipped with the model, relative to the spec's
            folder or absolute: edits get a ``clip_score`` and automatic strength judges with CLIP instead of the
            diffusion model. ``TIGHT_PIPELINE_CLIP_MODEL`` / ``JobConfig.clip_model`` override it. Never downloaded.
        scheduler: few-step models: the scheduler class to load (``ddim``, ``euler_ancestral`` — SDXL-Turbo's —,
            ``euler`` — SDXL-Lightning's —, ``lcm``); ``None`` = the one in the model's folder. Its config gives the
            noise levels and timestep spacing; how a step moves is the preset's ``sampler``.
        timestep_spacing: ``leading``, ``trailing`` (Turbo, Lightning: the first step at t = 999) or ``linspace``;
            ``None`` = the scheduler config's.
        lora: LoRA weights fused into the UNet at load (SDXL-Lightning's or an LCM-LoRA: a ``.safetensors`` file,
            a folder, or a cached repo id; never downloaded), at ``lora_scale``.

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
        engine: ``package.module:Class`` loaded instead of the family's engine (``method/factory.py``: an engine
            outside this package, or a test's); ``None``: the family's.
        hold_s: ``passthrough`` only: hold each batch this many seconds per item without using the CPU, a stand-in
            for accelerator time (benchmarks/bench_overlap.py).
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
    clip: str | None = None
    scheduler: str | None = None
    timestep_spacing: str | None = None
    lora: str | None = None
    lora_scale: float = 1.0
    max_batch: int = 8
    vae_batch: int = 4
    tf32: bool = False
    channels_last: bool = False
    compile: str = ""
    hold_s: float = 0.0
    engine: str | None = None

    @property
    def traits(self) -> Family:
        return FAMILY_TRAITS[self.family]

    def __post_init__(self) -> None:
        if self.engine is not None and (":" not in self.engine or not all(self.engine.partition(":")[::2])):
            raise ModelError(f"model {self.name!r}: engine {self.engine!r} must be 'package.module:Class'")
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
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ModelError(f"model {self.name!r}: unknown scheduler {self.scheduler!r}; expected one of {SCHEDULERS}")
        if self.timestep_spacing is not None and self.timestep_spacing not in SPACINGS:
            raise ModelError(f"model {self.name!r}: unknown timestep_spacing {self.timestep_spacing!r}; expected one "
                             f"of {SPACINGS}")
        if self.lora is not None and not FAMILY_TRAITS[self.family].lora:
            raise ModelError(f"model {self.name!r}: lora is for SD/SDXL UNets (family {self.family})")
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
        for key, default in _OMITTED_FROM_DIGEST.items():
            if settings[key] == default:
                del settings[key]  # specs that do not use a later field keep the digests they had before it
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _spec_from_mapping(data: dict[str, Any], relative_to: Path | None, origin: str) -> ModelSpec:
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ModelError(f"{origin}: unknown model spec keys {unknown}; allowed: {sorted(fields)}")
    data = dict(data)
    if relative_to is not None:
        # Paths inside a model.yaml are relative to its folder, so a model folder can be moved as a whole.
        for key in ("base", "adapter", "clip", "lora"):
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
        for key in ("base", "adapter", "clip", "lora"):
            if isinstance(data.get(key), str):
                data[key] = data[key].replace("${TIGHT_PIPELINE_HOME}", str(state_dir())).replace("${TIGHT_PIPELINE_PACKAGE}", package)
        data.setdefault("name", name)
        out[name] = _spec_from_mapping(data, None, f"configs/models.yaml:{name}")
    return out
