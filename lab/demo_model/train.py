"""Train the catalog demo model from scratch on synthetic product shots (CPU is enough; uses CUDA if present).

    python -m lab train-demo-model --out tight_pipeline/demo_model/weights --work .tight-pipeline/demo-train

Three phases, each an explicit loop with a progress bar, checkpointed to ``--work`` every
``checkpoint_every`` steps (run the same command again to resume; batches and noise depend only on the
seed and the step, so a resumed run draws exactly what an uninterrupted one would):

1. **autoencoder**: the VAE on 64x64 shots (L1 + MSE, a tiny KL term); then every training image is
   encoded once and the latent scale (``scaling_factor``) set to give unit variance;
2. **diffusion**: UNet + both text encoders + image encoder + IP-Adapter Plus jointly, epsilon prediction,
   with condition dropout: the adapter scale is drawn per step (0 = text only, 1, or uniform in between),
   10 % of captions are replaced by the empty prompt and 10 % of images by the zero image (what the
   unconditional branch of classifier-free guidance sees), so the model works with and without each
   condition and under CFG; an EMA of the weights is what gets saved;
3. **decoder**: the VAE decoder alone, refined on the fixed latents (the latent space the UNet learned
   does not move), which raises the reconstruction ceiling;
4. **export**: the EMA weights in the diffusers + h94 layout (float16 storage, loaded as float32).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tight_pipeline.demo_model.products import SIZE, ProductSpec, render_product

TRAIN_SEED_OFFSET = 0  # training shots: ProductSpec.sample(seed, i)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    train_images: int = 8192
    vae_steps: int = 1000
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 3600
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    text_dropout: float = 0.1
    image_dropout: float = 0.1  # zero image (the negative embeds)
    scale_zero: float = 0.25  # probability of a text-only step (adapter scale 0)
    scale_one: float = 0.45  # probability of adapter scale 1 (the rest: uniform in (0, 1))
    checkpoint_every: int = 250
    decoder_steps: int = 300  # decoder-only refinement on the fixed latents (the latent space does not move)
    decoder_lr: float = 5e-4


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_seed(seed: int, phase: int, step: int) -> int:
    """The random stream of one training step depends only on these (so resuming changes nothing)."""
    return (seed * 1_000_003 + phase * 100_000_007 + step) % 2**62


def render_dataset(seed: int, count: int, offset: int = TRAIN_SEED_OFFSET):
    """``count`` shots as (uint8 images (N, 64, 64, 3), captions, specs)."""
    shots = [render_product(ProductSpec.sample(seed + offset, i)) for i in range(count)]
    images = np.stack([np.asarray(s.image) for s in shots])
    return images, [s.caption for s in shots], [s.spec for s in shots]


class Paused(RuntimeError):
    """``max_steps`` reached: the checkpoint is saved; run again to continue."""


class _Run:
    """The work folder of one training run: its record, its one checkpoint writer and the step budget.

    A checkpoint is ``{"phase", "step", <name>: state_dict, ...}``; ``phase`` / ``step`` say where a resumed run
    starts (step = steps already done in that phase).
    """

    def __init__(self, work: Path, config: TrainConfig, max_steps: int | None):
        work.mkdir(parents=True, exist_ok=True)
        self.ckpt_path, self.record_path = work / "checkpoint.pt", work / "record.json"
        self.record = (json.loads(self.record_path.read_text()) if self.record_path.exists()
                       else {"config": asdict(config), "loss": {}, "wall_s": {}})
        stored = self.record["config"]  # settings added later are compatible while at their defaults
        added = {k: v for k, v in asdict(config).items() if k not in stored}
        if {k: asdict(config).get(k) for k in stored} != stored or added != {k: asdict(TrainConfig())[k] for k in added}:
            raise ValueError(f"{work} holds a run with a different config; use another --work folder or the same settings")
        self.max_steps, self.left = max_steps, max_steps if max_steps is not None else -1
        self.clock = time.perf_counter()

    def load(self) -> dict:
        import torch

        return torch.load(self.ckpt_path, weights_only=False) if self.ckpt_path.exists() else {"phase": "vae", "step": 0}

    def save(self, phase: str, step: int, timed: str | None = None, **modules) -> None:
        """The checkpoint (atomically) and the record; ``timed`` adds the time since the last save to that phase."""
        import torch

        if timed:
            self.record["wall_s"][timed] = self.record["wall_s"].get(timed, 0) + time.perf_counter() - self.clock
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save({"phase": phase, "step": step, **{k: m.state_dict() for k, m in modules.items()}}, tmp)
        os.replace(tmp, self.ckpt_path)
        self.write_record()
        self.clock = time.perf_counter()

    def write_record(self) -> None:
        self.record_path.write_text(json.dumps(self.record))

    def loss(self, phase: str, value: float) -> None:
        self.record["loss"].setdefault(phase, []).append(round(value, 5))

    def step_done(self, step: int, total: int, every: int, phase: str, **modules) -> None:
        """After optimisation step ``step`` (0-based): checkpoint every ``every`` steps and at the end of the
        phase, and stop with ``Paused`` (checkpoint saved) when this invocation's ``max_steps`` is used up."""
        due = (step + 1) % every == 0 or step + 1 == total
        pause = False
        if self.left >= 0:  # a budget was given (-1: none)
            self.left -= 1
            pause = self.left == 0
        if due or pause:
            self.save(phase, step + 1, timed=phase, **modules)
        if pause:
            raise Paused(f"paused after {self.max_steps} steps; checkpoint in {self.ckpt_path}")


def train_demo_model(out_dir: str | Path, work_dir: str | Path, config: TrainConfig = TrainConfig(),
                     progress: bool = True, log=print, max_steps: int | None = None) -> dict:
    """Run (or resume) training and write the model folder to ``out_dir``. Returns the training record.

    ``max_steps`` stops this invocation after that many optimisation steps (all phases together) with a
    checkpoint, raising ``Paused``: training in chunks gives exactly the weights of one uninterrupted run.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPImageProcessor

    from lab.demo_model.architecture import build_components, build_tokenizer, init_adapter

    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    run = _Run(Path(work_dir), config, max_steps)
    tokenizer = build_tokenizer(Path(work_dir) / "tokenizer")
    parts, image_encoder = build_components(config.seed, tokenizer)
    pipe = StableDiffusionXLPipeline(**parts, image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=False)
    init_adapter(pipe.unet, image_encoder, config.seed + 1)
    pipe.to(device)
    image_encoder.to(device)

    log(f"rendering {config.train_images} training shots (seed {config.seed})")
    images, captions, _ = render_dataset(config.seed, config.train_images)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    state = run.load()
    if run.ckpt_path.exists():
        log(f"resuming from {run.ckpt_path}: phase {state['phase']}, step {state['step']}")

    vae = pipe.vae
    if state["phase"] == "vae":
        _train_autoencoder(run, vae, pixels, config, state, device, progress)
        run.save("unet", 0, vae=vae)
        state = {"phase": "unet", "step": 0}
    else:
        vae.load_state_dict(state["vae"])
    vae.eval().requires_grad_(False)
    lat, latents = _latents(run, vae, pixels, device, log)

    modules = torch.nn.ModuleDict(dict(unet=pipe.unet, text_encoder=pipe.text_encoder,
                                       text_encoder_2=pipe.text_encoder_2, image_encoder=image_encoder))
    conditions = _conditions(tokenizer, CLIPImageProcessor(size=SIZE, crop_size=SIZE), images, captions)
    ema = _train_diffusion(run, pipe, modules, vae, latents, conditions, config, state, device, progress)
    if state["phase"] != "done":
        _refine_decoder(run, vae, modules, ema, pixels, lat, config, state, device, progress, log)
    return _export(run, pipe, image_encoder, modules, ema, config, Path(out_dir), log, t_start)


def _train_autoencoder(run: _Run, vae, pixels, config: TrainConfig, state: dict, device: str, progress: bool) -> None:
    """Phase 1: the VAE on the shots (L1 + MSE + a tiny KL term), from ``state``'s step."""
    import torch
    from tqdm import tqdm

    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    if "vae" in state:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
    vae.train()
    run.clock = time.perf_counter()
    for step in tqdm(range(state["step"], config.vae_steps), desc="autoencoder", disable=not progress,
                     initial=state["step"], total=config.vae_steps):
        gen = torch.Generator().manual_seed(_step_seed(config.seed, 1, step))
        idx = torch.randint(0, len(pixels), (config.vae_batch,), generator=gen)
        x = pixels[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(step, config.vae_steps, config.vae_lr, config.warmup)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.loss("vae", loss.item())
        run.step_done(step, config.vae_steps, config.checkpoint_every, "vae", vae=vae, opt=opt)


def _decoded_psnr(vae, lat, pixels, device: str) -> float:
    import torch

    with torch.no_grad():
        rec = torch.cat([vae.decode(lat[i : i + 256].to(device)).sample.cpu() for i in range(0, min(512, len(lat)), 256)])
    mse = float(((rec.clamp(-1, 1) - pixels[: len(rec)]) / 2).pow(2).mean())
    return round(10 * math.log10(1 / mse), 2)


def _latents(run: _Run, vae, pixels, device: str, log):
    """Every shot encoded once (the posterior mean, as the engine encodes); the latent scale set for unit
    variance. Returns (raw latents, scaled latents)."""
    import torch

    with torch.no_grad():
        lat = torch.cat([vae.encode(pixels[i : i + 256].to(device)).latent_dist.mean.cpu() for i in range(0, len(pixels), 256)])
    scaling = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    run.record["vae_psnr_train"] = _decoded_psnr(vae, lat, pixels, device)
    log(f"autoencoder: PSNR {run.record['vae_psnr_train']} dB on training shots, latent scale {scaling:.4f}")
    return lat, lat * scaling


def _conditions(tokenizer, processor, images, captions) -> dict:
    """Token ids of the captions and of the empty prompt, and the image encoder's input (the pipeline's own
    preprocessing), prepared once."""
    import torch
    from PIL import Image

    def token_ids(texts):
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    clip_pixels = torch.cat([
        processor(images=[Image.fromarray(a) for a in images[i : i + 512]], return_tensors="pt").pixel_values
        for i in range(0, len(images), 512)
    ])
    return {"ids": token_ids(captions), "empty_ids": token_ids([""])[0], "clip_pixels": clip_pixels}


def _train_diffusion(run: _Run, pipe, modules, vae, latents, conditions: dict, config: TrainConfig, state: dict,
                     device: str, progress: bool):
    """Phase 2: UNet + text encoders + image encoder + adapter jointly (epsilon prediction, condition dropout,
    adapter scale drawn per step). Returns the EMA copy of ``modules``."""
    import copy

    import torch
    from tqdm import tqdm

    ema = copy.deepcopy(modules).requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=config.unet_lr, weight_decay=0.01)
    if "modules" in state:
        modules.load_state_dict(state["modules"])
        ema.load_state_dict(state["ema"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32, device=device)
    ids, empty_ids, clip_pixels = conditions["ids"], conditions["empty_ids"], conditions["clip_pixels"]
    modules.train()
    start = state["step"] if state["phase"] == "unet" else config.unet_steps
    run.clock = time.perf_counter()
    for step in tqdm(range(start, config.unet_steps), desc="diffusion", disable=not progress, initial=start,
                     total=config.unet_steps):
        gen = torch.Generator().manual_seed(_step_seed(config.seed, 2, step))
        b = config.unet_batch
        idx = torch.randint(0, len(latents), (b,), generator=gen)
        z0 = latents[idx].to(device)
        tok = ids[idx].clone()
        tok[torch.rand(b, generator=gen) < config.text_dropout] = empty_ids
        pix = clip_pixels[idx].clone()
        pix[torch.rand(b, generator=gen) < config.image_dropout] = 0.0
        u = float(torch.rand(1, generator=gen))
        scale = 0.0 if u < config.scale_zero else 1.0 if u < config.scale_zero + config.scale_one else float(torch.rand(1, generator=gen))
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (b,), generator=gen).to(device)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr(step, config.unet_steps, config.unet_lr, config.warmup)

        tok = tok.to(device)
        hidden_1 = modules["text_encoder"](tok, output_hidden_states=True).hidden_states[-2]
        out_2 = modules["text_encoder_2"](tok, output_hidden_states=True)
        text = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
        image_tokens = modules["image_encoder"](pix.to(device), output_hidden_states=True).hidden_states[-2]
        pipe.set_ip_adapter_scale(scale)
        pred = modules["unet"](
            noisy, t, encoder_hidden_states=text,
            added_cond_kwargs={"text_embeds": out_2.text_embeds, "time_ids": time_ids.repeat(b, 1),
                               "image_embeds": [image_tokens[:, None]]},
        ).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), modules.parameters()):
                e.lerp_(p, 1 - decay)
        run.loss("unet", loss.item())
        run.step_done(step, config.unet_steps, config.checkpoint_every, "unet", vae=vae, modules=modules, ema=ema, opt=opt)
    return ema


def _refine_decoder(run: _Run, vae, modules, ema, pixels, lat, config: TrainConfig, state: dict, device: str,
                    progress: bool, log) -> None:
    """Phase 3: the VAE decoder alone, on the fixed latents the engine decodes (the UNet's latent space stays)."""
    import torch
    from tqdm import tqdm

    opt_dec = torch.optim.AdamW(list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()),
                                lr=config.decoder_lr, weight_decay=0.0)
    start = state["step"] if state["phase"] == "decoder" else 0
    if state["phase"] == "decoder":
        opt_dec.load_state_dict(state["opt_dec"])
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    vae.decoder.train()
    run.clock = time.perf_counter()
    for step in tqdm(range(start, config.decoder_steps), desc="decoder", disable=not progress, initial=start,
                     total=config.decoder_steps):
        gen = torch.Generator().manual_seed(_step_seed(config.seed, 3, step))
        idx = torch.randint(0, len(pixels), (config.vae_batch,), generator=gen)
        x = pixels[idx].to(device)
        for group in opt_dec.param_groups:
            group["lr"] = _lr(step, config.decoder_steps, config.decoder_lr, config.warmup)
        rec = vae.decode(lat[idx].to(device)).sample
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean()
        opt_dec.zero_grad(set_to_none=True)
        loss.backward()
        opt_dec.step()
        run.loss("decoder", loss.item())
        run.step_done(step, config.decoder_steps, config.checkpoint_every, "decoder", vae=vae, modules=modules, ema=ema,
                      opt_dec=opt_dec)
    vae.eval().requires_grad_(False)
    run.save("done", 0, vae=vae, modules=modules, ema=ema)
    run.record["vae_psnr_train_after_decoder"] = _decoded_psnr(vae, lat, pixels, device)
    log(f"decoder refined: PSNR {run.record['vae_psnr_train_after_decoder']} dB on training shots")


def _export(run: _Run, pipe, image_encoder, modules, ema, config: TrainConfig, out_dir: Path, log, t_start: float) -> dict:
    """Phase 4: the EMA weights in the diffusers + h94 layout (float16 storage) and ``training.json``."""
    import torch

    from lab.demo_model.architecture import save_demo_model

    modules.load_state_dict(ema.state_dict())
    modules.eval()
    pipe.to("cpu")
    image_encoder.to("cpu")
    record = run.record
    losses = record["loss"].get("unet", [])
    record["final_loss"] = round(float(np.mean(losses[-100:])), 5) if losses else None
    record["train_wall_s"] = round(sum(record["wall_s"].values()), 1)
    note = (f"seed {config.seed}, {config.train_images} shots, autoencoder {config.vae_steps} steps, "
            f"diffusion {config.unet_steps} steps x {config.unet_batch}, decoder refinement {config.decoder_steps} "
            f"steps; training loops {record['train_wall_s']} s in all")
    save_demo_model(pipe, image_encoder, out_dir, dtype=torch.float16, note=note)
    record["config"] = asdict(config)
    (out_dir / "training.json").write_text(json.dumps({k: v for k, v in record.items() if k != "loss"}
                                                      | {"loss_every_50": {k: v[::50] for k, v in record["loss"].items()}},
                                                      indent=1))
    run.write_record()
    log(f"model written to {out_dir} ({time.perf_counter() - t_start:.0f} s this invocation)")
    return record
