"""Write a tiny SDXL-shaped pipeline with random weights plus a separate IP-Adapter in the h94 layout.

    tight-pipeline make-tiny-model DIR

The folder is loaded by the same ``load_pipeline`` as real SDXL + IP-Adapter weights. Random weights prove
the plumbing (shapes, layouts, loops, exactness of inversion), not that the image condition helps.
``size="full"`` writes the same layout at SDXL's real size (2.6 B-parameter UNet, both text encoders, a ViT-H
image encoder; 1024 px; about 7 GB in float16) with random weights: what ``benchmarks/bench_gpu.py`` times on
a GPU without downloading anything.

Layout written (mirrors stabilityai/stable-diffusion-xl-base-1.0 and h94/IP-Adapter):

    DIR/model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/
    DIR/ip_adapter/sdxl_models/ip-adapter_tiny.safetensors      (image_proj.* and ip_adapter.* keys)
    DIR/ip_adapter/models/image_encoder/                         (CLIPVisionModelWithProjection)
    DIR/model.yaml                                               (the model spec, paths relative to DIR)
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tight_pipeline.method.models import cross_attention_layers

TINY_WEIGHT_NAME = "ip-adapter_tiny.safetensors"
TINY_RESOLUTION = 64
_IMAGE_TOKENS = 4  # diffusers' ImageProjection for plain IP-Adapters uses 4 tokens


def _byte_level_tokenizer(out: Path, max_length: int = 77) -> None:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (no hub download needed)."""
    from transformers import CLIPTokenizer

    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+n.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    for ch in chars:
        vocab.setdefault(ch + "</w>", len(vocab))
    tmp = out / "_build"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(out)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


SIZES = ("tiny", "full")
FULL_RESOLUTION = 1024


def _full_components(seed: int) -> dict:
    """SDXL base 1.0's architecture (its published configs) with random weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, transformer_layers_per_block=(1, 2, 10),
        projection_class_embeddings_input_dim=2816, cross_attention_dim=2048,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024,
        scaling_factor=0.13025, force_upcast=True,
    )
    common = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=600, max_position_embeddings=77)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                                num_hidden_layers=12, projection_dim=768, hidden_act="quick_gelu", **common))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                                num_attention_heads=20, num_hidden_layers=32,
                                                                projection_dim=1280, hidden_act="gelu", **common))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, scheduler=_scheduler())


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        num_train_timesteps=1000,
    )


def build_tiny_components(seed: int = 0, size: str = "tiny") -> dict:
    """Tiny SDXL components built from configs (the shapes diffusers' own fast tests use); ``size="full"``:
    SDXL's real architecture."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if size == "full":
        return _full_components(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled text dims
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=TINY_RESOLUTION,
    )
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
        vocab_size=600,
        hidden_act="gelu",
        max_position_embeddings=77,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, scheduler=_scheduler())


def _tiny_adapter_state(unet, image_embed_dim: int, seed: int) -> dict:
    """Random IP-Adapter weights in the h94 key layout for ``unet``'s cross-attention layers."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim
    scale = 0.2 if cross_dim <= 64 else cross_dim**-0.5
    state = {
        "image_proj.proj.weight": torch.randn(cross_dim * _IMAGE_TOKENS, image_embed_dim, generator=gen) * scale,
        "image_proj.proj.bias": torch.zeros(cross_dim * _IMAGE_TOKENS),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    # h94 numbering: cross-attention processors get odd ids 1, 3, 5, ... in attn_processors order.
    for n, (_, hidden) in enumerate(cross_attention_layers(unet)):
        for kind in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * n + 1}.{kind}.weight"] = torch.randn(hidden, cross_dim, generator=gen) * scale
    return state


def build_tiny_pipeline(seed: int = 0, tokenizer_dir: str | Path | None = None, size: str = "tiny"):
    """The tiny pipeline in memory: (pipeline without adapter, image encoder, adapter state dict).

    ``make_tiny_model`` saves exactly these objects; tests compare them with what loads back from disk.
    """
    import tempfile

    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

    parts = build_tiny_components(seed, size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tokenizer_dir) if tokenizer_dir else Path(tmp) / "tokenizer"
        if not (folder / "vocab.json").exists():
            _byte_level_tokenizer(folder)
        tok = CLIPTokenizer.from_pretrained(folder)
    pipe = StableDiffusionXLPipeline(
        **parts, tokenizer=tok, tokenizer_2=tok, image_encoder=None, feature_extractor=None,
        force_zeros_for_empty_prompt=False,
    )
    torch.manual_seed(seed + 4)
    if size == "full":  # ViT-H/14, as h94's models/image_encoder
        vision_config = CLIPVisionConfig(hidden_size=1280, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16,
                                         intermediate_size=5120, image_size=224, patch_size=14, hidden_act="gelu")
    else:
        vision_config = CLIPVisionConfig(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=37, image_size=32, patch_size=4)
    vision = CLIPVisionModelWithProjection(vision_config)
    state = _tiny_adapter_state(parts["unet"], vision.config.projection_dim, seed + 5)
    return pipe, vision, state


def make_tiny_model(out_dir: str | Path, seed: int = 0, size: str = "tiny", dtype=None, turbo: bool = False) -> Path:
    """Write the tiny model folder (pipeline + separate h94-layout IP-Adapter + model.yaml); returns it.

    ``size="full"``: SDXL's real architecture with random weights (for GPU benchmarks); ``dtype``: storage dtype
    (e.g. ``torch.float16``; loading casts to the spec's dtype). ``turbo``: SDXL-Turbo's layout — its scheduler is
    Euler-ancestral with ``trailing`` timesteps (the first step at t = 999) and the spec says ``scheduler:
    euler_ancestral`` (random weights: the few-step path's plumbing, not a distilled model)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: expected one of {SIZES}")
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _byte_level_tokenizer(out / "tokenizer")
    pipe, vision, state = build_tiny_pipeline(seed, tokenizer_dir=out / "tokenizer", size=size)
    if turbo:
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                                                     steps_offset=0)
    if dtype is not None:
        pipe.to(dtype)
        vision.to(dtype)
        state = {k: v.to(dtype) for k, v in state.items()}
    pipe.save_pretrained(out, safe_serialization=True)
    adapter_root = out / "ip_adapter"
    vision.save_pretrained(adapter_root / "models" / "image_encoder", safe_serialization=True)
    (adapter_root / "sdxl_models").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, adapter_root / "sdxl_models" / TINY_WEIGHT_NAME)

    spec = dict(
        name=("tiny-sdxl" if size == "tiny" else "random-sdxl-full") + ("-turbo" if turbo else ""),
        family="sdxl",
        base=".",
        adapter="ip_adapter",
        adapter_subfolder="sdxl_models",
        adapter_weight=TINY_WEIGHT_NAME,
        image_encoder="models/image_encoder",
        resolution=TINY_RESOLUTION if size == "tiny" else FULL_RESOLUTION,
        dtype="float32",
        device="auto",
        **({"scheduler": "euler_ancestral"} if turbo else {}),
    )
    (out / "model.yaml").write_text(
        "# Tiny SDXL-shaped model with random weights, written by `tight-pipeline make-tiny-model`.\n"
        + yaml.safe_dump(spec, sort_keys=False)
    )
    return out


# -- FLUX ---------------------------------------------------------------------------------------------------
FLUX_ADAPTER_WEIGHT = "ip_adapter.safetensors"  # the file name of XLabs-AI/flux-ip-adapter


def _t5_word_tokenizer(out: Path, words: list[str], max_length: int = 64) -> None:
    """A T5 (Unigram) tokenizer with whole words and single letters (written locally, no hub)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0) for w in sorted(set(words))]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-'"]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)
    tok.save_pretrained(out)


# FLUX.1-dev's published architecture (transformer/, vae/, text_encoder/, text_encoder_2/ configs), XLabs' adapter over
# openai/clip-vit-large-patch14: what ``build_tiny_flux(size="full")`` builds with random weights.
_FLUX_SIZES = {
    "tiny": dict(
        transformer=dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                         guidance_embeds=False),
        vae=dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                 sample_size=TINY_RESOLUTION, shift_factor=0.0609, scaling_factor=1.5035),
        clip=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        t5=dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
        vision=dict(hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    image_size=32, patch_size=4),
        t5_tokens=64,
    ),
    "full": dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         axes_dims_rope=[16, 56, 56], guidance_embeds=True),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, norm_num_groups=32,
                 sample_size=1024, shift_factor=0.1159, scaling_factor=0.3611),
        clip=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  projection_dim=768, hidden_act="quick_gelu"),
        t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"),
        vision=dict(hidden_size=1024, projection_dim=768, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096, image_size=224, patch_size=14, hidden_act="quick_gelu"),
        t5_tokens=512,
    ),
}


def build_tiny_flux(seed: int = 0, folder: Path | None = None, size: str = "tiny"):
    """A tiny FluxPipeline (CLIP + T5 text encoders, 2-block transformer, factor-2 VAE) with random weights,
    its CLIP image encoder and an IP-Adapter state dict in the XLabs layout. Returns (pipe, vision, state).

    ``size="full"``: FLUX.1-dev's real architecture (12B transformer, T5-XXL, 16-channel VAE; ViT-L/14 image encoder),
    built where ``torch``'s default device and dtype say (``bench_gpu.py --family flux`` builds it in CUDA memory
    in bf16: ~36 GB, never written to disk); the tokenizers stay the tiny ones (any ids they give are valid)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast)

    from tight_pipeline.demo_model.products import vocabulary

    cfg = _FLUX_SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder) if folder else Path(tmp)
        if not (root / "tokenizer" / "vocab.json").exists():
            _byte_level_tokenizer(root / "tokenizer")
        if not (root / "tokenizer_2" / "tokenizer.json").exists():
            _t5_word_tokenizer(root / "tokenizer_2", vocabulary() + "cup of coffee saucer motorcycle rocket studio".split(),
                               max_length=cfg["t5_tokens"])
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        tokenizer_2 = T5TokenizerFast.from_pretrained(root / "tokenizer_2")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**cfg["transformer"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, use_quant_conv=False, use_post_quant_conv=False,
        down_block_types=("DownEncoderBlock2D",) * len(cfg["vae"]["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(cfg["vae"]["block_out_channels"]), **cfg["vae"],
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=600 if size == "tiny" else 49408,
        max_position_embeddings=77, **cfg["clip"],
    ))
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2) if size == "tiny" else 32128, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **cfg["t5"],
    ))
    scheduler = (FlowMatchEulerDiscreteScheduler() if size == "tiny" else  # FLUX.1-dev's scheduler config
                 FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                 base_image_seq_len=256, max_image_seq_len=4096))
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
        image_encoder=None, feature_extractor=None,
    )
    torch.manual_seed(seed + 4)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["vision"]))
    joint, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    dev, dtype = transformer.device, transformer.dtype
    gen = None if dev.type == "meta" else torch.Generator(device=dev).manual_seed(seed + 5)

    def randn(*shape):  # on the meta device (shapes only: tests/test_flux.py checks the full architecture so)
        if gen is None:
            return torch.empty(*shape, device=dev, dtype=dtype)
        return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * 0.2).to(dtype)

    state = {
        "ip_adapter_proj_model.proj.weight": randn(4 * joint, vision.config.projection_dim),
        "ip_adapter_proj_model.proj.bias": torch.zeros(4 * joint, device=dev, dtype=dtype),
        "ip_adapter_proj_model.norm.weight": torch.ones(joint, device=dev, dtype=dtype),
        "ip_adapter_proj_model.norm.bias": torch.zeros(joint, device=dev, dtype=dtype),
    }
    for i in range(transformer.config.num_layers):  # double-stream blocks carry the image attention
        for kind in ("k", "v"):
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kind}_proj.weight"] = randn(inner, joint)
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kind}_proj.bias"] = torch.zeros(inner, device=dev, dtype=dtype)
    return pipe, vision, state


def make_tiny_flux_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny FLUX folder + XLabs-layout IP-Adapter + its CLIP image encoder + model.yaml; returns it.

    Layout (mirrors black-forest-labs/FLUX.1-dev, XLabs-AI/flux-ip-adapter, openai/clip-vit-large-patch14):

        DIR/model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/
        DIR/ip_adapter/ip_adapter.safetensors          (ip_adapter_proj_model.*, double_blocks.*.processor.*)
        DIR/ip_adapter/image_encoder/                   (CLIPVisionModelWithProjection)
    """
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _byte_level_tokenizer(out / "tokenizer")
    from tight_pipeline.demo_model.products import vocabulary

    _t5_word_tokenizer(out / "tokenizer_2", vocabulary() + "cup of coffee saucer motorcycle rocket studio".split())
    pipe, vision, state = build_tiny_flux(seed, folder=out)
    pipe.save_pretrained(out, safe_serialization=True)
    vision.save_pretrained(out / "ip_adapter" / "image_encoder", safe_serialization=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out / "ip_adapter" / FLUX_ADAPTER_WEIGHT)
    spec = dict(name="tiny-flux", family="flux", base=".", adapter="ip_adapter", adapter_subfolder="",
                adapter_weight=FLUX_ADAPTER_WEIGHT, image_encoder="image_encoder", resolution=TINY_RESOLUTION,
                dtype="float32", device="auto")
    (out / "model.yaml").write_text(
        "# Tiny FLUX-shaped model with random weights, written by `tight-pipeline make-tiny-model --family flux`.\n"
        + yaml.safe_dump(spec, sort_keys=False)
    )
    return out
