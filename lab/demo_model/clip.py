"""A small CLIP for the catalog demo model: the local CLIP that scores its edits and judges automatic strength.

    python -m lab train-demo-clip            # ~14 min on 2 CPU cores; writes tight_pipeline/demo_model/clip_weights

A real ``transformers.CLIPModel`` (ViT image tower on 64 px with 8 px patches, text tower over the demo
tokenizer's caption words) with its ``CLIPProcessor``, saved in the layout of ``openai/clip-vit-*`` folders, so
the engine loads it exactly as it would load a real CLIP (``ModelSpec.clip``, ``TIGHT_PIPELINE_CLIP_MODEL``). The model
``catalog-demo-clip`` in ``configs/models.yaml`` is the demo model with this CLIP configured. It lives beside the
diffusion weights, not inside their folder, so the plain ``catalog-demo`` model's fingerprint does not change.

Trained contrastively on the demo model's own *training* shots and their captions (seed 0, the images the
diffusion model learnt from) and nothing else: never on the evaluation's held-out or calibration shots, never
on edits, masks or the colour classifier. Several shots of a batch share a caption (the caption space is
small), so a caption's targets are spread over every image that carries it. Images are lightly blurred and
noised in training (the edits it judges come through a VAE); hues are never jittered.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lab.demo_model.architecture import MAX_TOKENS
from tight_pipeline.demo_model.products import SIZE, ProductSpec, render_product

MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai CLIP's normalisation, kept so the processor is the usual one
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipTrainConfig:
    seed: int = 0  # training shots: ProductSpec.sample(seed, i), as the diffusion model's
    images: int = 8192
    steps: int = 1200
    batch: int = 256
    lr: float = 2e-3
    width: int = 64
    layers: int = 3
    embed: int = 64
    threads: int = 2


def build_clip(vocab_size: int, config: ClipTrainConfig):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=config.width, intermediate_size=4 * config.width,
                          num_hidden_layers=config.layers, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                          projection_dim=config.embed, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = CLIPVisionConfig(image_size=SIZE, patch_size=8, hidden_size=config.width,
                              intermediate_size=4 * config.width, num_hidden_layers=config.layers,
                              num_attention_heads=4, projection_dim=config.embed)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                projection_dim=config.embed))


def processor_for(tokenizer):
    from transformers import CLIPImageProcessor, CLIPProcessor

    images = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                image_mean=list(MEAN), image_std=list(STD))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def _augment(pixels, gen):
    """Light blur and noise on a batch in [0, 1] (what a VAE round trip does to an image); hues untouched."""
    import torch
    import torch.nn.functional as F

    b = pixels.shape[0]
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(b, 1, 1, 1, generator=gen) * 0.6
    out = pixels * (1 - mix) + blurred * mix
    out = out + torch.randn(out.shape, generator=gen) * (torch.rand(b, 1, 1, 1, generator=gen) * 0.03)
    return out.clamp(0, 1)


def train_demo_clip(out_dir: str | Path, tokenizer_dir: str | Path, config: ClipTrainConfig = ClipTrainConfig(),
                    log=print) -> dict:
    """Train the demo CLIP and save model + processor to ``out_dir``; returns the training record."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    shots = [render_product(ProductSpec.sample(config.seed, i)) for i in range(config.images)]
    captions = [s.caption for s in shots]
    pixels = torch.from_numpy(np.stack([np.asarray(s.image) for s in shots])).permute(0, 3, 1, 2).float() / 255
    tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    index = {c: k for k, c in enumerate(sorted(set(captions)))}
    caption_ids = torch.tensor([index[c] for c in captions])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    log(f"rendered {config.images} training shots, {len(set(captions))} distinct captions "
        f"({time.perf_counter() - t0:.1f} s)")

    model = build_clip(len(tokenizer), config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(config.seed + 1)
    losses = []
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / config.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, config.images, (config.batch,), generator=gen)
        images = (_augment(pixels[idx], gen) - mean) / std
        out = model(input_ids=tokens["input_ids"][idx], attention_mask=tokens["attention_mask"][idx],
                    pixel_values=images)
        same = (caption_ids[idx][:, None] == caption_ids[idx][None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        logits = out.logits_per_image
        loss = 0.5 * (-(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.T.log_softmax(1)).sum(1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == config.steps - 1:
            log(f"step {step}/{config.steps}: loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor_for(tokenizer).save_pretrained(out)
    record = {"config": asdict(config), "final_loss": round(float(np.mean(losses[-100:])), 4),
              "parameters": int(sum(p.numel() for p in model.parameters())),
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    log(f"demo CLIP written to {out}: {record}")
    return record
