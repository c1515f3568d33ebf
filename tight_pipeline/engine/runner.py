"""One item end to end: the Tight Inversion recipe, with scores and per-phase timings.

    engine = TightInversion.from_spec(resolve_model_spec("catalog-demo"))
    result = engine.edit_item(image, "a coffee cup", [("blue", "a blue coffee cup")], load_preset("balanced"))

The recipe (``edit_item``):
 1. fit the photo to the model's resolution; encode it with the VAE (z_0) and decode z_0 again
    (the VAE round-trip: the ceiling any reconstruction can reach);
 2. embed the image once with the adapter's image encoder (positive and negative embeds);
 3. invert z_0 → z_T at guidance 1.0 with source prompt + image embeds at ``inversion_scale``;
 4. from z_T, denoise the reconstruction (guidance 1.0, same condition) and every edit (CFG ``guidance``,
    edit prompt + image embeds vs. negative prompt + negative image embeds, ``edit_scale``) in one batch;
 5. decode and score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from tight_pipeline.engine import conditioning, editing, inversion, metrics
from tight_pipeline.engine.models import ModelSpec, load_pipeline
from tight_pipeline.presets import Preset


class InputError(ValueError):
    """The item cannot be processed as given (the message says why); other items are unaffected."""


@dataclass
class ItemResult:
    input: Image.Image  # the photo fitted to the working resolution
    vae_roundtrip: Image.Image
    reconstruction: Image.Image
    edits: dict[str, Image.Image]
    scores: dict[str, float | None]
    edit_scores: dict[str, dict[str, float | None]]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def fit_size(width: int, height: int, resolution: int, multiple: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """(w, h) with about ``resolution**2`` pixels, the photo's aspect ratio, both sides multiples of ``multiple``."""
    aspect = width / height
    if max(aspect, 1 / aspect) > max_aspect:
        raise InputError(f"aspect ratio {max(aspect, 1 / aspect):.1f}:1 exceeds the limit {max_aspect:g}:1")
    w = resolution * aspect**0.5
    h = resolution / aspect**0.5
    return max(multiple, int(round(w / multiple)) * multiple), max(multiple, int(round(h / multiple)) * multiple)


class TightInversion:
    """Tight Inversion on one loaded diffusers pipeline (one per process / Ray actor)."""

    def __init__(self, pipe, spec: ModelSpec, clip_scorer: metrics.ClipScorer | None = None):
        self.pipe = pipe
        self.spec = spec
        self.clip = clip_scorer
        unet_down = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        self.multiple = max(8, pipe.vae_scale_factor * unet_down)  # diffusers pipelines need multiples of 8
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype

    @classmethod
    def from_spec(cls, spec: ModelSpec, clip_model: str | None = None) -> "TightInversion":
        """The engine for ``spec``'s family: ``FluxTightInversion`` for FLUX, this class for SD/SDXL."""
        if spec.family == "flux" and cls is TightInversion:
            from tight_pipeline.engine.flux import FluxTightInversion

            return FluxTightInversion.from_spec(spec, clip_model)
        pipe = load_pipeline(spec)
        scorer = metrics.ClipScorer(clip_model, device=str(pipe.unet.device)) if clip_model else None
        return cls(pipe, spec, scorer)

    # -- images <-> latents ---------------------------------------------------------------------------
    def prepare_image(self, image: Image.Image) -> Image.Image:
        w, h = fit_size(image.width, image.height, self.spec.resolution, self.multiple)
        return image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)

    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        vae = self.pipe.vae
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        x = x.to(self.device, vae.dtype)
        return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipe.vae
        x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in x]

    def result(self, fitted, roundtrip, decoded: list, edits: list[tuple[str, str]], timings: dict,
               warnings: list[str]) -> ItemResult:
        """Decoded ``[reconstruction, *edits]`` -> the scored ``ItemResult`` (score time added to ``timings``)."""
        reconstruction, edit_images = decoded[0], dict(zip([e for e, _ in edits], decoded[1:]))
        t0 = time.perf_counter()
        scores, edit_scores = self.score(fitted, roundtrip, reconstruction, edit_images, edits)
        timings["score_s"] = time.perf_counter() - t0
        return ItemResult(fitted, roundtrip, reconstruction, edit_images, scores, edit_scores, timings, warnings)

    def score(self, fitted, roundtrip, reconstruction, edit_images: dict, edits: list[tuple[str, str]]):
        """Reconstruction scores (vs input and vs VAE round-trip) and per-edit scores."""
        n = len(edits)
        scores = {
            "psnr_vs_input": metrics.psnr(reconstruction, fitted),
            "ssim_vs_input": metrics.ssim(reconstruction, fitted),
            "psnr_vs_vae": metrics.psnr(reconstruction, roundtrip),
            "ssim_vs_vae": metrics.ssim(reconstruction, roundtrip),
            "vae_psnr_vs_input": metrics.psnr(roundtrip, fitted),
            "lpips_vs_input": None,
        }
        clip = self.clip.score(list(edit_images.values()), [p for _, p in edits]) if self.clip and edits else [None] * n
        edit_scores = {
            edit_id: {
                "edit_change": metrics.mean_abs_change(edit_images[edit_id], reconstruction),
                "edit_psnr_vs_input": metrics.psnr(edit_images[edit_id], fitted),
                "clip_score": clip[i],
            }
            for i, (edit_id, _) in enumerate(edits)
        }
        return scores, edit_scores

    def check_inputs(self, preset: Preset, source_prompt: str, edits: list[tuple[str, str]]) -> list[str]:
        """Raise ``InputError`` for a method of another family or an empty prompt; warnings for long ones."""
        self.check_method(preset)
        warnings = self.check_prompt(source_prompt, "source prompt")
        for edit_id, prompt in edits:
            warnings += self.check_prompt(prompt, f"edit {edit_id!r} prompt")
        return warnings

    def check_method(self, preset: Preset) -> None:
        if preset.method == "rf_inversion":
            raise InputError(f"preset {preset.name!r} uses rf_inversion, a FLUX method; model {self.spec.name!r} is "
                             f"{self.spec.family} (use ddim, renoise or ddpm_ef, or a flux model)")

    # -- the recipe ---------------------------------------------------------------------------------
    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        """(tokens in ``prompt``, tokens the model reads) for the text encoder that limits prompts."""
        return len(self.pipe.tokenizer(prompt).input_ids), self.pipe.tokenizer.model_max_length

    def check_prompt(self, prompt: str, what: str) -> list[str]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{what} is empty")
        n, limit = self.prompt_tokens(prompt)
        return [f"{what} has {n} tokens; the model reads the first {limit}, the rest is ignored"] if n > limit else []

    def invert(self, z0, text, image_rows, schedule, preset: Preset, callback=None):
        """z_0 → (z_T, noise maps or None) with the preset's method."""
        if preset.method == "ddim":
            return inversion.invert_ddim(self.pipe, z0, schedule, text, image_rows, callback=callback), None
        if preset.method == "ddpm_ef":
            return inversion.invert_ddpm_ef(self.pipe, z0, schedule, text, image_rows, seed=preset.seed, callback=callback)
        return inversion.invert_renoise(
            self.pipe, z0, schedule, text, image_rows,
            iterations=preset.renoise_iterations, average_last=preset.renoise_average_last, callback=callback,
        ), None

    def edit_item(
        self,
        image: Image.Image,
        source_prompt: str,
        edits: list[tuple[str, str]],
        preset: Preset,
        progress=None,
    ) -> ItemResult:
        """Invert ``image`` once and produce its reconstruction plus one image per ``(edit_id, prompt)``.

        ``progress``, if given, is called with a short phase name after each model step.
        """
        warnings = self.check_inputs(preset, source_prompt, edits)
        timings: dict[str, float] = {}
        step = (lambda phase: (lambda i: progress(phase))) if progress else (lambda phase: None)

        t0 = time.perf_counter()
        fitted = self.prepare_image(image)
        z0 = self.encode(fitted)
        roundtrip = self.decode(z0)[0]
        timings["encode_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        h, w = fitted.height, fitted.width
        prompts = [source_prompt] + [p for _, p in edits] + [preset.negative_prompt]
        text_all = conditioning.embed_text(self.pipe, prompts, h, w)
        negative = text_all.rows([len(prompts) - 1])
        if not preset.negative_prompt and getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            negative = conditioning.TextCondition(
                torch.zeros_like(negative.embeds),
                None if negative.pooled is None else torch.zeros_like(negative.pooled),
                negative.time_ids,
            )
        img = conditioning.embed_image(self.pipe, fitted)
        timings["embed_s"] = time.perf_counter() - t0

        schedule = inversion.make_schedule(self.pipe.scheduler, preset.steps)
        source = text_all.rows([0])
        t0 = time.perf_counter()
        conditioning.set_adapter_scale(self.pipe, preset.inversion_scale)
        z_T, noises = self.invert(z0, source, img and img.rows([False]), schedule, preset, step("invert"))
        timings["invert_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n = len(edits)
        edit_text = text_all.rows(list(range(1, n + 1)))
        uncond_text = _repeat(negative, n)
        if preset.edit_scale == preset.inversion_scale or n == 0:
            # One batch: [reconstruction, uncond x n, cond x n].
            text = _cat([source, uncond_text, edit_text]) if n else source
            rows = img and img.rows([False] + [True] * n + [False] * n)
            z = editing.denoise(self.pipe, z_T, schedule, text, rows, 1, n, preset.guidance, step("denoise"), noises)
        else:
            z_rec = editing.denoise(self.pipe, z_T, schedule, source, img and img.rows([False]), 1, 0, 1.0, step("denoise"), noises)
            conditioning.set_adapter_scale(self.pipe, preset.edit_scale)
            z_edit = editing.denoise(
                self.pipe, z_T, schedule, _cat([uncond_text, edit_text]),
                img and img.rows([True] * n + [False] * n), 0, n, preset.guidance, step("denoise"), noises,
            )
            z = torch.cat([z_rec, z_edit])
        timings["denoise_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = self.decode(z)
        timings["decode_s"] = time.perf_counter() - t0
        return self.result(fitted, roundtrip, decoded, edits, timings, warnings)


def _cat(conds: list[conditioning.TextCondition]) -> conditioning.TextCondition:
    return conditioning.TextCondition(
        torch.cat([c.embeds for c in conds]),
        None if conds[0].pooled is None else torch.cat([c.pooled for c in conds]),
        None if conds[0].time_ids is None else torch.cat([c.time_ids for c in conds]),
    )


def _repeat(cond: conditioning.TextCondition, n: int) -> conditioning.TextCondition:
    return _cat([cond] * n) if n else cond.rows([])
