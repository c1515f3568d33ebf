"""The catalog demo model's architecture: a small SDXL-shaped pipeline plus an IP-Adapter Plus.

Same classes and folder layout as ``stabilityai/stable-diffusion-xl-base-1.0`` + ``h94/IP-Adapter``
(``ip-adapter-plus_sdxl_vit-h``), scaled down for 64x64 product shots and a CPU training budget:

- VAE ``AutoencoderKL`` with 3 blocks: 64x64x3 <-> 16x16x4 (factor 4);
- UNet ``UNet2DConditionModel`` with SDXL's ``text_time`` added conditioning, cross-attention at 8x8 and
  4x4, blocks (64, 96, 128);
- two CLIP text encoders (hidden 32 each; penultimate layers concatenated to 64 dims, pooled embeds from
  the second) and one word-level CLIP tokenizer built for the caption vocabulary;
- CLIP vision encoder (64 px, 8 px patches) whose penultimate hidden states feed IP-Adapter Plus's
  Resampler (16 image tokens), and decoupled image cross-attention (``to_k_ip``/``to_v_ip``) in every
  cross-attention layer.

``save_demo_model`` writes the folder that ``engine.models.load_pipeline`` reads, the adapter as a separate
file with h94's key names.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tight_pipeline.demo_model.products import SIZE, vocabulary
from tight_pipeline.method.models import cross_attention_layers

ADAPTER_WEIGHT = "ip-adapter-plus_catalog-demo.safetensors"
IMAGE_TOKENS = 16
MAX_TOKENS = 16  # captions are at most 10 words


def build_tokenizer(out: Path):
    """A CLIP tokenizer whose vocabulary has every caption word as one token (plus characters as fallback).

    Each word gets a chain of merges (its prefixes); a merge's rank is the word's index times 32 plus the
    position, and ranks of shared pairs reuse the first, so a word always merges left to right into itself.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in vocabulary():
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=MAX_TOKENS)
    tok.save_pretrained(out)
    return CLIPTokenizer.from_pretrained(out)


def build_components(seed: int, tokenizer):
    """Fresh, randomly initialised components: dict for ``StableDiffusionXLPipeline`` and the image encoder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=SIZE, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 96, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 3, 4), transformer_layers_per_block=1, use_linear_projection=True,
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=SIZE,
        patch_size=8, projection_dim=32,
    ))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    )
    parts = dict(vae=vae, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                 tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler)
    return parts, image_encoder


def h94_plus_template(embed_dims: int, hidden_dims: int, output_dims: int, depth: int = 4, mult: int = 4) -> dict:
    """Shapes of the ``image_proj.*`` keys of an IP-Adapter Plus file (the original Resampler's names)."""
    shapes = {
        "latents": (1, IMAGE_TOKENS, hidden_dims),
        "proj_in.weight": (hidden_dims, embed_dims), "proj_in.bias": (hidden_dims,),
        "proj_out.weight": (output_dims, hidden_dims), "proj_out.bias": (output_dims,),
        "norm_out.weight": (output_dims,), "norm_out.bias": (output_dims,),
    }
    for i in range(depth):
        p = f"layers.{i}"
        shapes.update({
            f"{p}.0.norm1.weight": (hidden_dims,), f"{p}.0.norm1.bias": (hidden_dims,),
            f"{p}.0.norm2.weight": (hidden_dims,), f"{p}.0.norm2.bias": (hidden_dims,),
            f"{p}.0.to_q.weight": (hidden_dims, hidden_dims), f"{p}.0.to_kv.weight": (2 * hidden_dims, hidden_dims),
            f"{p}.0.to_out.weight": (hidden_dims, hidden_dims),
            f"{p}.1.0.weight": (hidden_dims,), f"{p}.1.0.bias": (hidden_dims,),
            f"{p}.1.1.weight": (hidden_dims * mult, hidden_dims), f"{p}.1.3.weight": (hidden_dims, hidden_dims * mult),
        })
    return shapes


def _plus_key_map(unet, shapes: dict) -> dict:
    """diffusers Resampler parameter name -> (h94 key, chunk) found by pushing marked values through
    diffusers' own converter (so saving is the exact inverse of what ``load_ip_adapter`` does)."""
    import torch

    marked, offset = {}, 0
    for key, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        marked[key] = torch.arange(offset, offset + n, dtype=torch.float64).reshape(shape)
        offset += n
    module = unet._convert_ip_adapter_image_proj_to_diffusers(marked, low_cpu_mem_usage=False)
    mapping = {}
    for name, value in module.state_dict().items():
        first = float(value.flatten()[0].item())  # marks stay exact in float32 (below 2**24)
        for key, ref in marked.items():
            flat = ref.flatten()
            if flat[0] <= first <= flat[-1]:
                chunks = ref.chunk(2, dim=0) if key.endswith("to_kv.weight") else (ref,)
                for c, chunk in enumerate(chunks):
                    if chunk.shape == value.shape and torch.equal(chunk.to(value.dtype), value):
                        mapping[name] = (key, c if len(chunks) > 1 else None)
        if name not in mapping:
            raise RuntimeError(f"cannot map diffusers parameter {name} back to the h94 layout")
    return mapping


def init_adapter(unet, image_encoder, seed: int) -> None:
    """Attach a freshly initialised IP-Adapter Plus to ``unet`` through diffusers' own loader."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shapes = h94_plus_template(image_encoder.config.hidden_size, 64, unet.config.cross_attention_dim)
    proj = {}
    for key, shape in shapes.items():
        if key.endswith(("norm1.weight", "norm2.weight", "norm_out.weight", "1.0.weight")):
            proj[key] = torch.ones(shape)
        elif key.endswith("bias"):
            proj[key] = torch.zeros(shape)
        else:
            proj[key] = torch.randn(shape, generator=gen) * (shape[-1] ** -0.5)
    state = {"image_proj": proj, "ip_adapter": {}}
    for n, (_name, hidden) in enumerate(cross_attention_layers(unet)):
        state["ip_adapter"][f"{2 * n + 1}.to_k_ip.weight"] = torch.randn(hidden, unet.config.cross_attention_dim, generator=gen) * 0.02
        state["ip_adapter"][f"{2 * n + 1}.to_v_ip.weight"] = torch.randn(hidden, unet.config.cross_attention_dim, generator=gen) * 0.02
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)


def adapter_state_h94(unet, image_encoder) -> dict:
    """The UNet's loaded IP-Adapter Plus as a flat h94 state dict (``image_proj.*``, ``ip_adapter.*``)."""
    import torch

    proj = unet.encoder_hid_proj.image_projection_layers[0]
    shapes = h94_plus_template(image_encoder.config.hidden_size, proj.proj_in.out_features, proj.proj_out.out_features)
    mapping = _plus_key_map(unet, shapes)
    pieces: dict[str, list] = {}
    for name, value in proj.state_dict().items():
        key, chunk = mapping[name]
        pieces.setdefault(key, [None, None])[chunk or 0] = value.detach().float()
    out = {f"image_proj.{k}": torch.cat([p for p in v if p is not None]) for k, v in pieces.items()}
    procs = unet.attn_processors
    for n, (name, _) in enumerate(cross_attention_layers(unet)):
        out[f"ip_adapter.{2 * n + 1}.to_k_ip.weight"] = procs[name].to_k_ip[0].weight.detach().float()
        out[f"ip_adapter.{2 * n + 1}.to_v_ip.weight"] = procs[name].to_v_ip[0].weight.detach().float()
    return out


def save_demo_model(pipe, image_encoder, out_dir: Path, dtype=None, note: str = "") -> Path:
    """Write the diffusers folder + h94-layout adapter + ``model.yaml`` that ``load_pipeline`` reads.

    ``dtype`` (e.g. ``torch.float16``) is the storage type; loading casts back to the spec's dtype.
    """
    import copy

    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
    adapter = {k: cast(v).contiguous() for k, v in adapter_state_h94(pipe.unet, image_encoder).items()}
    # the pipeline folder holds the UNet without the adapter (as in stabilityai/stable-diffusion-xl-base-1.0)
    plain_unet = type(pipe.unet).from_config(pipe.unet.config)
    base_state = {k: v for k, v in pipe.unet.state_dict().items() if "encoder_hid_proj" not in k and "_ip." not in k}
    missing, unexpected = plain_unet.load_state_dict(base_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"UNet without adapter: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain_unet.config["encoder_hid_dim_type"] = None
    saved = StableDiffusionXLPipeline(
        vae=copy.deepcopy(pipe.vae), text_encoder=copy.deepcopy(pipe.text_encoder),
        text_encoder_2=copy.deepcopy(pipe.text_encoder_2), tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=plain_unet, scheduler=pipe.scheduler, force_zeros_for_empty_prompt=False,
    )
    image_encoder = copy.deepcopy(image_encoder)
    if dtype is not None:
        saved.to(dtype)
        image_encoder.to(dtype)
    saved.save_pretrained(out, safe_serialization=True)
    image_encoder.save_pretrained(out / "ip_adapter" / "models" / "image_encoder", safe_serialization=True)
    (out / "ip_adapter" / "sdxl_models").mkdir(parents=True, exist_ok=True)
    save_file(adapter, out / "ip_adapter" / "sdxl_models" / ADAPTER_WEIGHT)
    spec = dict(name="catalog-demo", family="sdxl", base=".", adapter="ip_adapter", adapter_subfolder="sdxl_models",
                adapter_weight=ADAPTER_WEIGHT, image_encoder="models/image_encoder", resolution=SIZE,
                dtype="float32", device="auto")
    header = "# The catalog demo model, trained by `python -m lab train-demo-model`.\n"
    (out / "model.yaml").write_text(header + "".join(f"# {line}\n" for line in note.splitlines()) + yaml.safe_dump(spec, sort_keys=False))
    return out
