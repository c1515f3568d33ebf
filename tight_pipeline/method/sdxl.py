"""SD / SDXL with an IP-Adapter: the Tight Inversion recipe for a group of same-size items (``Engine`` does the rest).

The recipe (per item, in ``run_group``):
 1. fit the photo to the model's resolution; encode it with the VAE (z_0) and decode z_0 again
    (the VAE round-trip: the ceiling any reconstruction can reach);
 2. embed the image once with the adapter's image encoder (positive and negative embeds);
 3. invert z_0 → z_T at guidance 1.0 with source prompt + image embeds at ``inversion_scale``;
 4. from z_T, denoise the reconstruction (guidance 1.0, same condition) and every edit (CFG ``guidance``,
    edit prompt + image embeds vs. negative prompt + negative image embeds, ``edit_scale``) in one batch; with
    a given mask and ``region_blend_start`` < 1, the edit rows keep the inversion's latent outside the mask;
 5. decode and score; bring every output to the photo's size (``items.finish_regions``).
"""

from __future__ import annotations

import time

import torch
from PIL import Image

from tight_pipeline.method import conditioning, editing, inversion, ledits, region
from tight_pipeline.method.engine import Engine
from tight_pipeline.method.items import InputError, ItemRequest, ItemResult
from tight_pipeline.method.presets import Preset
from tight_pipeline.method.regularization import NoiseRegularization


# The zero-shot judge's fixed timesteps and noise seeds (``prompt_errors``): mid-range noise, where the
# prompt decides colour and material but the layout is already fixed by the image. On the demo model's training
# shots single timesteps from 300 to 700 separated landed from missed edits about equally (AUC 0.88-0.90 with
# two noises each); with rival prompts (method/auto/rivals.py) one timestep separated them as well as three or four
# did on the calibration shots (AUC 0.985 at t=500 vs 0.986), so one row per prompt: the rivals multiply the
# prompts, not the cost of each.
JUDGE_TIMESTEPS = (500,)
JUDGE_SEEDS = (0,)


class TightInversion(Engine):
    """Tight Inversion on one loaded SD / SDXL diffusers pipeline with an h94 IP-Adapter."""

    families = ("sdxl", "sd")

    @staticmethod
    def network_of(pipe):
        return pipe.unet

    @staticmethod
    def latent_multiple(pipe) -> int:
        unet_down = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        return max(8, pipe.vae_scale_factor * unet_down)  # diffusers pipelines need multiples of 8

    def _encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor

    @torch.no_grad()
    def decode_tensor(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, H, W, 3) uint8 on the device, in chunks of ``spec.vae_batch``."""
        vae = self.pipe.vae
        out = []
        for lo in range(0, latents.shape[0], self.spec.vae_batch):
            z = latents[lo : lo + self.spec.vae_batch]
            x = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out)

    def check_method(self, preset: Preset) -> None:
        if preset.method == "ledits_pp":
            ledits.check(self.spec, preset)
        if preset.method == "rf_inversion":
            raise InputError(f"preset {preset.name!r} uses rf_inversion, a FLUX method; model {self.spec.name!r} is "
                             f"{self.spec.family} (use ddim, renoise or ddpm_ef, or a flux model)")

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        return len(self.pipe.tokenizer(prompt).input_ids), self.pipe.tokenizer.model_max_length

    # -- the zero-shot judge of automatic strength (method/auto/strength.py) -----------------------------------
    @torch.no_grad()
    def judge_group(self, images: list[Image.Image], prompts: list[str], levels=None, seeds=None) -> torch.Tensor:
        """The text-only model's mean denoising error of each (image, prompt) row, images of one size.

        The diffusion model as a zero-shot classifier (Li et al. 2023, "Your diffusion model is secretly a
        zero-shot classifier", eq. 5): ``err(x, c) = E_{t, eps} ||eps - eps_theta(sqrt(a_t) z_0 + sqrt(1 - a_t) eps, c)||^2``
        over fixed timesteps (``levels``, default ``JUDGE_TIMESTEPS``) and noises (``seeds``), the same for every
        row (paired: two prompts' or two images' errors differ by what they show, not by the draw). Text only
        (adapter scale 0): the question is about the text, and the image condition would explain the image
        whatever the prompt."""
        timesteps = JUDGE_TIMESTEPS if levels is None else levels
        seeds = JUDGE_SEEDS if seeds is None else seeds
        pipe = self.pipe
        prediction_type = pipe.scheduler.config.prediction_type
        w, h = images[0].size
        z0 = self._encode_once(images)
        text = conditioning.embed_text(pipe, prompts, h, w)
        # At scale 0 the adapter's output is multiplied by 0: any embeds of the right shape do, so the image
        # encoder runs once per size, not once per image.
        embeds = conditioning.embed_image(pipe, images[0])
        image_rows = None if embeds is None else embeds.negative.expand(len(images), *embeds.negative.shape[1:])
        conditioning.set_adapter_scale(pipe, 0.0)
        err = torch.zeros(len(images), device=z0.device)
        for seed in seeds:  # the same noise for every row: a result does not depend on its batch
            noise = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(z0)
            for t in timesteps:
                alpha = float(pipe.scheduler.alphas_cumprod[t])
                xt = alpha**0.5 * z0 + (1 - alpha) ** 0.5 * noise
                pred = conditioning.predict_noise(pipe, xt, torch.tensor(t, device=z0.device), text, image_rows,
                                                  max_batch=self.spec.max_batch)
                _, eps = inversion.split_prediction(pred, xt, alpha, prediction_type)
                err += (eps - noise).pow(2).flatten(1).mean(1)
        return err / (len(seeds) * len(timesteps))

    # -- the recipe ---------------------------------------------------------------------------------
    def invert(self, z0, text, image_rows, schedule, preset: Preset, callback=None, trajectory: dict | None = None):
        """z_0 → (z_T, noise maps or None) with the preset's method; one row per item (``trajectory``: see
        ``inversion.invert_ddim``)."""
        mb = self.spec.max_batch
        if preset.method == "ddim":
            return inversion.invert_ddim(self.pipe, z0, schedule, text, image_rows, callback=callback, max_batch=mb,
                                         trajectory=trajectory), None
        if preset.method == "ddpm_ef":
            return inversion.invert_ddpm_ef(self.pipe, z0, schedule, text, image_rows, seed=preset.seed,
                                            callback=callback, max_batch=mb, trajectory=trajectory)
        reg = NoiseRegularization(kl=preset.renoise_reg_kl, ac=preset.renoise_reg_ac, steps=preset.renoise_reg_steps,
                                  rolls=preset.renoise_reg_rolls)
        # few-step models: the noise-corrected inversion of their stochastic step, which also returns its noise maps
        corrected = preset.sampler in ("euler_ancestral", "lcm")
        out = (inversion.invert_renoise_corrected if corrected else inversion.invert_renoise)(
            self.pipe, z0, schedule, text, image_rows, iterations=preset.renoise_iterations,
            average_last=preset.renoise_average_last, callback=callback, max_batch=mb,
            early_t=preset.renoise_early_t, early_average=preset.renoise_early_average, reg=reg, seed=preset.seed,
            trajectory=trajectory,
        )
        return out if corrected else (out, None)

    def run_group(self, requests: list[ItemRequest], fitted: list[Image.Image], warnings: list[list[str]],
                  preset: Preset, progress=None) -> list[ItemResult]:
        """The recipe for same-size items, batched: one row per item in the inversion; rows
        ``[reconstruction x B, unconditional x E, conditional x E]`` (E = all edits of all items) in denoising.
        Phase times are the group's, divided by its size (``batch_items`` says how many shared them). The peer
        method ``ledits_pp`` runs LEDITS++ instead (``method/ledits.py``)."""
        if preset.method == "ledits_pp":
            return ledits.run_group(self, requests, fitted, warnings, preset, progress)
        pipe, b = self.pipe, len(requests)
        step, timings, pixels, z0, roundtrip = self.start_group(fitted, progress)
        edit_owner, regions, trajectory = self.edit_rows(requests, preset)  # the item of every edit row

        t0 = time.perf_counter()
        h, w = fitted[0].height, fitted[0].width
        e = len(edit_owner)
        prompts = [r.source_prompt for r in requests] + [p for r in requests for _, p in r.edits] + [preset.negative_prompt]
        text_all = conditioning.embed_text(pipe, prompts, h, w)
        negative = text_all.rows([len(prompts) - 1])
        images = [conditioning.embed_image(pipe, f) for f in fitted]
        timings.embed_s = time.perf_counter() - t0

        def image_rows(*parts: tuple[list[int], bool]):
            """Adapter embeds for rows of the given (items, negative?) parts, in order; None without an adapter."""
            if images[0] is None:
                return None
            return torch.cat([images[k].negative if neg else images[k].positive for owners, neg in parts for k in owners])

        schedule = inversion.make_schedule(pipe.scheduler, preset.steps, preset.sampler)
        items = list(range(b))
        redo = [k for k in items if requests[k].reconstruction is None]  # reconstructions to make
        source = text_all.rows(items)
        t0 = time.perf_counter()
        conditioning.set_adapter_scale(pipe, preset.inversion_scale)
        z_T, noises = self.invert(z0, source, image_rows((items, False)), schedule, preset, step("invert"), trajectory)
        blend = None if trajectory is None else region.Blend(
            torch.cat([region.latent_mask(r.mask, *z0.shape[-2:]) for r in regions]).to(z0.device), edit_owner,
            trajectory, z0, lambda i: schedule.below(schedule.timesteps[i]),
            int(round(preset.region_blend_start * preset.steps)))
        timings.invert_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        mb = self.spec.max_batch
        # Unconditional rows: the preset's negative prompt, or (negative_source) each edit's own item's source prompt.
        uncond = text_all.rows(edit_owner) if preset.negative_source else _repeat(negative, e)
        guided_text = conditioning.TextCondition.cat([uncond, text_all.rows(list(range(b, b + e)))])
        # Every denoising row starts at its item's z_T and (DDPM) follows its item's noise maps.
        if not redo and e == 0:
            z = z_T[:0]
        elif preset.edit_scale == preset.inversion_scale or e == 0:
            rows = redo + edit_owner
            text = conditioning.TextCondition.cat([text_all.rows(redo), guided_text]) if e else text_all.rows(redo)
            img = image_rows((redo, False), (edit_owner, True), (edit_owner, False))
            z = editing.denoise(pipe, z_T[rows], schedule, text, img, len(redo), e, preset.guidance, step("denoise"),
                                _pick(noises, rows), max_batch=mb, sharpening=preset.cfg_sharpening, blend=blend,
                                cfgpp=preset.guidance_mode == "cfgpp")
        else:
            z_rec = z_T[:0]
            if redo:
                z_rec = editing.denoise(pipe, z_T[redo], schedule, text_all.rows(redo), image_rows((redo, False)),
                                        len(redo), 0, 1.0, step("denoise"), _pick(noises, redo), max_batch=mb)
            conditioning.set_adapter_scale(pipe, preset.edit_scale)
            z_edit = editing.denoise(pipe, z_T[edit_owner], schedule, guided_text,
                                     image_rows((edit_owner, True), (edit_owner, False)), 0, e, preset.guidance,
                                     step("denoise"), _pick(noises, edit_owner), max_batch=mb,
                                     sharpening=preset.cfg_sharpening, blend=blend,
                                     cfgpp=preset.guidance_mode == "cfgpp")
            z = torch.cat([z_rec, z_edit])
        timings.denoise_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = self.decode_tensor(z) if len(z) else torch.zeros((0, h, w, 3), dtype=torch.uint8, device=z.device)
        timings.decode_s = time.perf_counter() - t0
        return self.results(requests, fitted, pixels, roundtrip, decoded, edit_owner, timings, warnings, preset, redo)


def _pick(noises: list[torch.Tensor] | None, rows: list[int]) -> list[torch.Tensor] | None:
    """Per-step noise maps for the given rows (each row follows its item's maps)."""
    return None if noises is None else [n[rows] for n in noises]


def _repeat(cond: conditioning.TextCondition, n: int) -> conditioning.TextCondition:
    return conditioning.TextCondition.cat([cond] * n) if n else cond.rows([])
