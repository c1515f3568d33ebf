"""Tight Inversion on FLUX: RF-Inversion conditioned on the image itself through an XLabs IP-Adapter.

    engine = TightInversion.from_spec(resolve_model_spec("tiny-flux"))      # -> FluxTightInversion
    result = engine.edit_item(image, "a red mug", [("blue", "a blue mug")], load_preset("flux-balanced"))

The recipe is the SDXL one with FLUX's parts:
 1. fit the photo, encode it with the VAE ((z - shift) * scale), pack 2x2 patches into tokens;
 2. embed the image once with the adapter's CLIP image encoder; the negative embeds are those of a black
    image (what ``FluxPipeline`` uses for true CFG);
 3. invert with ``rf_inversion.invert_rf`` (true CFG 1.0: conditional branch only; inversion prompt + image
    embeds at ``inversion_scale``);
 4. from the inverted latent: the reconstruction (same condition, no control) and every edit (true CFG
    ``guidance``: edit prompt + image embeds vs. negative prompt + negative image embeds, pulled towards the
    input by ``eta`` early on) in one batch;
 5. unpack, decode, score like every other family.

Every transformer call gets a *new* ``joint_attention_kwargs`` dict: ``FluxTransformer2DModel.forward`` pops
the image embeds out of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tight_pipeline.engine import rf_inversion
from tight_pipeline.engine.runner import InputError, ItemResult, TightInversion
from tight_pipeline.presets import Preset


@dataclass(frozen=True)
class FluxText:
    embeds: torch.Tensor  # (B, tokens, joint_attention_dim): T5
    pooled: torch.Tensor  # (B, pooled_projection_dim): CLIP
    text_ids: torch.Tensor  # (tokens, 3)

    def rows(self, index: list[int]) -> "FluxText":
        pick = torch.tensor(index, dtype=torch.long, device=self.embeds.device)
        return FluxText(self.embeds[pick], self.pooled[pick], self.text_ids)

    @staticmethod
    def cat(parts: list["FluxText"]) -> "FluxText":
        return FluxText(torch.cat([p.embeds for p in parts]), torch.cat([p.pooled for p in parts]), parts[0].text_ids)


def max_text_tokens(pipe) -> int:
    return int(min(512, getattr(pipe.tokenizer_2, "model_max_length", 512) or 512))


@torch.no_grad()
def embed_text(pipe, prompts: list[str]) -> FluxText:
    embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=pipe.transformer.device, num_images_per_prompt=1,
        max_sequence_length=max_text_tokens(pipe),
    )
    return FluxText(embeds, pooled, text_ids)


def has_adapter(pipe) -> bool:
    return getattr(pipe.transformer, "encoder_hid_proj", None) is not None


@torch.no_grad()
def embed_image(pipe, image: Image.Image):
    """(positive, negative) adapter embeds, each (1, 1, dim); ``None`` without an adapter."""
    if not has_adapter(pipe):
        return None
    device = pipe.transformer.device
    positive = pipe.prepare_ip_adapter_image_embeds(image, None, device, 1)[0]
    black = np.zeros((image.width, image.height, 3), dtype=np.uint8)  # as FluxPipeline does for true CFG
    negative = pipe.prepare_ip_adapter_image_embeds(black, None, device, 1)[0]
    return positive, negative


def flux_sigmas(pipe, steps: int, image_tokens: int) -> tuple[list[float], list[float]]:
    """(sigmas s_0..s_N with s_N = 0, model timesteps for levels 0..N) exactly as ``FluxPipeline`` sets them
    (level N, the clean latent, has timestep 0; the inversion evaluates the model there)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = pipe.scheduler
    config = scheduler.config
    mu = calculate_shift(image_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return [float(s) for s in scheduler.sigmas], [float(t) for t in scheduler.timesteps] + [0.0]


class FluxTightInversion(TightInversion):
    """Tight Inversion on a loaded ``FluxPipeline`` with an XLabs IP-Adapter (one per process / actor)."""

    def __init__(self, pipe, spec, clip_scorer=None):
        self.pipe = pipe
        self.spec = spec
        self.clip = clip_scorer
        self.multiple = max(8, pipe.vae_scale_factor * 2)  # VAE factor x 2x2 packing
        self.device = pipe.transformer.device
        self.dtype = pipe.transformer.dtype

    @classmethod
    def from_spec(cls, spec, clip_model: str | None = None) -> "FluxTightInversion":
        from tight_pipeline.engine import metrics
        from tight_pipeline.engine.models import load_pipeline

        pipe = load_pipeline(spec)
        scorer = metrics.ClipScorer(clip_model, device=str(pipe.transformer.device)) if clip_model else None
        return cls(pipe, spec, scorer)

    # -- images <-> packed latents --------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        vae = self.pipe.vae
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        z = vae.encode(x.to(self.device, vae.dtype)).latent_dist.mean
        return ((z - vae.config.shift_factor) * vae.config.scaling_factor).to(self.dtype)

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        return self.pipe._pack_latents(z, b, c, h, w)

    @torch.no_grad()
    def decode_packed(self, packed: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        vae = self.pipe.vae
        z = self.pipe._unpack_latents(packed, height, width, self.pipe.vae_scale_factor)
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        x = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in x]

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:  # unpacked latents (for the round-trip)
        vae = self.pipe.vae
        h, w = latents.shape[-2] * self.pipe.vae_scale_factor, latents.shape[-1] * self.pipe.vae_scale_factor
        return self.decode_packed(self.pack(latents), h, w)

    # -- one transformer call -------------------------------------------------------------------------
    def velocity_fn(self, text: FluxText, image_rows: torch.Tensor | None, image_ids, timesteps, guidance):
        """v(x, level) for a batch whose rows match ``text``/``image_rows``/``guidance`` row for row."""

        def velocity(x: torch.Tensor, level: int) -> torch.Tensor:
            kwargs = {"ip_adapter_image_embeds": [image_rows]} if image_rows is not None else None  # fresh dict
            t = torch.full((x.shape[0],), timesteps[level], dtype=x.dtype, device=x.device) / 1000
            return self.pipe.transformer(
                hidden_states=x, timestep=t, guidance=guidance, pooled_projections=text.pooled,
                encoder_hidden_states=text.embeds, txt_ids=text.text_ids, img_ids=image_ids,
                joint_attention_kwargs=kwargs, return_dict=False,
            )[0]

        return velocity

    def guidance_rows(self, values: list[float]):
        if not self.pipe.transformer.config.guidance_embeds:
            return None
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        return len(self.pipe.tokenizer_2(prompt).input_ids), max_text_tokens(self.pipe)  # T5 reads the prompt

    def check_method(self, preset: Preset) -> None:
        if preset.method != "rf_inversion":
            raise InputError(f"preset {preset.name!r} uses {preset.method}, an SD/SDXL method; model "
                             f"{self.spec.name!r} is flux (use a preset with method rf_inversion)")

    # -- the recipe -----------------------------------------------------------------------------------
    def edit_item(self, image: Image.Image, source_prompt: str, edits: list[tuple[str, str]], preset: Preset,
                  progress=None) -> ItemResult:
        warnings = self.check_inputs(preset, source_prompt, edits)
        timings: dict[str, float] = {}
        step = (lambda phase: (lambda i: progress(phase))) if progress else (lambda phase: None)
        pipe = self.pipe

        t0 = time.perf_counter()
        fitted = self.prepare_image(image)
        z0 = self.encode(fitted)
        roundtrip = self.decode(z0)[0]
        y0 = self.pack(z0)
        h, w = fitted.height, fitted.width
        image_ids = pipe._prepare_latent_image_ids(1, z0.shape[-2] // 2, z0.shape[-1] // 2, self.device, self.dtype)
        timings["encode_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        inversion_prompt = source_prompt if preset.inversion_prompt == "source" else ""
        prompts = [inversion_prompt] + [p for _, p in edits] + [preset.negative_prompt]
        text_all = embed_text(pipe, prompts)
        img = embed_image(pipe, fitted)
        timings["embed_s"] = time.perf_counter() - t0

        sigmas, timesteps = flux_sigmas(pipe, preset.steps, y0.shape[1])
        source = text_all.rows([0])
        t0 = time.perf_counter()
        self._set_scale(preset.inversion_scale)
        noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(preset.seed), dtype=torch.float32)
        x1 = rf_inversion.invert_rf(
            self.velocity_fn(source, img and img[0], image_ids, timesteps, self.guidance_rows([1.0])),
            y0, sigmas, gamma=preset.gamma, target_noise=noise.to(self.device, self.dtype),
            fixed_point_iterations=preset.fixed_point_iterations, callback=step("invert"),
        )
        timings["invert_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n = len(edits)
        rec = rf_inversion.denoise_rf(
            self.velocity_fn(source, img and img[0], image_ids, timesteps, self.guidance_rows([1.0])),
            x1, sigmas, callback=step("denoise"),
        )
        outs = [rec]
        if n:
            self._set_scale(preset.edit_scale)
            text = FluxText.cat([text_all.rows([n + 1] * n), text_all.rows(list(range(1, n + 1)))])
            rows = img and torch.cat([img[1]] * n + [img[0]] * n)
            velocity = self.velocity_fn(text, rows, image_ids, timesteps, self.guidance_rows([preset.distilled_guidance] * 2 * n))

            def guided(x, level):
                out = velocity(torch.cat([x, x]), level)
                uncond, cond = out[:n], out[n:]
                return uncond + preset.guidance * (cond - uncond)

            outs.append(rf_inversion.denoise_rf(
                guided, x1.repeat(n, 1, 1), sigmas, y0=y0, eta=preset.eta,
                eta_start=preset.eta_start, eta_stop=preset.eta_stop, callback=step("denoise"),
            ))
        z = torch.cat(outs)
        timings["denoise_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = self.decode_packed(z, h, w)
        timings["decode_s"] = time.perf_counter() - t0
        return self.result(fitted, roundtrip, decoded, edits, timings, warnings)

    def _set_scale(self, scale: float) -> None:
        if has_adapter(self.pipe):
            self.pipe.set_ip_adapter_scale(float(scale))
