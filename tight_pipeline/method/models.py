"""Model loading: SDXL / SD pipelines with an h94-layout IP-Adapter, FLUX with an XLabs-layout one, or none (passthrough).

Weights are only ever read from a local folder or a pre-filled Hugging Face cache: every call passes
``local_files_only=True``. Nothing here downloads.

    spec = resolve_model_spec("path/to/model-folder")   # a folder with model.yaml, a YAML file, or a name
    pipe = load_pipeline(spec)                          # a diffusers pipeline with the adapter loaded

A model folder written by ``make_tiny_model`` is loaded by exactly this code, like real weights. Specs are
``specs.py``; the weights' fingerprints ``fingerprints.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tight_pipeline.method.specs import ModelError, ModelSpec


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


def _pil_image_processors() -> None:
    """Use transformers' PIL image processors by name when torchvision is absent (it is never installed beside the
    CPU torch wheel: its PyPI build does not import there). transformers falls back to the same classes by itself,
    but with a console warning per process that no user can act on; choosing them here is the same result, quietly."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return
    import sys

    import transformers

    for name in ("CLIPImageProcessor", "SiglipImageProcessor"):
        pil = getattr(transformers, f"{name}Pil", None)
        if pil is not None:
            # the module object in sys.modules, read after the lazy import above (a first import swaps it)
            setattr(sys.modules["transformers"], name, pil)


def _scheduler(spec: ModelSpec, config):
    """The spec's scheduler class from the model's scheduler config (its spacing overridden by the spec's)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler

    classes = {"ddim": DDIMScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler,
               "euler": EulerDiscreteScheduler, "lcm": LCMScheduler}
    extra = {"timestep_spacing": spec.timestep_spacing} if spec.timestep_spacing else {}
    return classes[spec.scheduler or "ddim"].from_config(config, **extra)


def _fuse_lora(pipe, spec: ModelSpec) -> None:
    """Load the spec's LoRA (a .safetensors file, a folder, a cached repo id, or ``owner/repo/file.safetensors`` for
    one file of a cached repo that holds several — SDXL-Lightning's; never downloaded) and fuse it into the UNet at
    ``lora_scale``, so that the network runs at its plain speed and the IP-Adapter loads on top."""
    path = Path(spec.lora).expanduser()
    where, kwargs = str(spec.lora), {}
    if path.is_file():
        where, kwargs = str(path.parent), {"weight_name": path.name}
    elif path.is_absolute() and not path.exists():
        raise ModelError(f"model {spec.name!r}: lora {path} does not exist")
    elif spec.lora.endswith(".safetensors") and len(Path(spec.lora).parts) >= 3 and not spec.lora.startswith("."):
        parts = Path(spec.lora).parts  # owner/repo/[subfolder/]file.safetensors of the Hugging Face cache
        where, kwargs = "/".join(parts[:2]), {"weight_name": "/".join(parts[2:])}
    try:
        pipe.load_lora_weights(where, adapter_name="spec", local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {spec.name!r}: lora {spec.lora} could not be loaded "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    pipe.fuse_lora(lora_scale=spec.lora_scale)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go


def load_pipeline(spec: ModelSpec):
    """Load the diffusers pipeline of ``spec`` and its IP-Adapter, offline, from safetensors.

    Returns the pipeline on its device, with a DDIM scheduler (or the spec's ``scheduler``) configured from the
    model's own scheduler config and the spec's ``timestep_spacing`` (FLUX keeps its flow-matching scheduler), the
    spec's LoRA fused into the UNet, the IP-Adapter loaded (scale 0 until set) and progress bars off.
    """
    import diffusers
    import transformers

    _pil_image_processors()
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

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
    pick_device(spec)  # a missing device fails here, before any weights are read
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
    return prepare_pipeline(pipe, spec)


def prepare_pipeline(pipe, spec: ModelSpec):
    """What ``load_pipeline`` does after reading the base weights: the spec's scheduler, LoRA and IP-Adapter, the
    device, progress bars off, the speed settings. Also for a pipeline built in memory (``bench_gpu.py --family
    flux`` builds FLUX's 12B architecture on the GPU rather than writing and reading 36 GB)."""
    import torch

    dtype = torch_dtype(spec.dtype)
    device = pick_device(spec)
    if spec.family != "flux":
        pipe.scheduler = _scheduler(spec, pipe.scheduler.config)
    if spec.lora:
        _fuse_lora(pipe, spec)
    if getattr(getattr(pipe, "unet", None), "config", None) is not None and pipe.unet.config.get("time_cond_proj_dim"):
        raise ModelError(f"model {spec.name!r}: its UNet takes a guidance embedding (time_cond_proj_dim: an LCM-distilled "
                         "UNet such as lcm-sdxl); the engine does not feed one — use the base model with its LCM-LoRA "
                         "(lora:, scheduler: lcm) instead")
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
