"""Tight Inversion on FLUX: RF-Inversion conditioned on the image itself through an XLabs IP-Adapter.

    engine = load_engine(resolve_model_spec("tiny-flux"))      # method/factory.py -> FluxTightInversion
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

from tight_pipeline.method import editing, region, rf_inversion
from tight_pipeline.method.engine import Engine
from tight_pipeline.method.items import InputError, ItemResult
from tight_pipeline.method.presets import Preset

# The zero-shot judge's noise levels (sigma) for ``FluxTightInversion.prompt_errors``.
JUDGE_SIGMAS = (0.3, 0.5, 0.7)
JUDGE_SEEDS = (0, 1)


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


class FluxTightInversion(Engine):
    """Tight Inversion on a loaded ``FluxPipeline`` with an XLabs IP-Adapter (one per process / actor)."""

    families = ("flux",)

    @staticmethod
    def network_of(pipe):
        return pipe.transformer

    @staticmethod
    def latent_multiple(pipe) -> int:
        return max(8, pipe.vae_scale_factor * 2)  # VAE factor x 2x2 packing

    # -- images <-> packed latents --------------------------------------------------------------------
    def _encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return (vae.encode(x).latent_dist.mean.float() - vae.config.shift_factor) * vae.config.scaling_factor

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        return self.pipe._pack_latents(z, b, c, h, w)

    @torch.no_grad()
    def decode_tensor(self, latents: torch.Tensor) -> torch.Tensor:
        """Unpacked latents -> (B, H, W, 3) uint8 on the device, in chunks of ``spec.vae_batch``."""
        vae = self.pipe.vae
        out = []
        for lo in range(0, latents.shape[0], self.spec.vae_batch):
            z = latents[lo : lo + self.spec.vae_batch] / vae.config.scaling_factor + vae.config.shift_factor
            x = vae.decode(z.to(vae.dtype), return_dict=False)[0]
            out.append(((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out)

    def decode_packed(self, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.decode_tensor(self.pipe._unpack_latents(packed, height, width, self.pipe.vae_scale_factor))

    # -- one transformer call -------------------------------------------------------------------------
    def velocity_fn(self, text: FluxText, image_rows: torch.Tensor | None, image_ids, timesteps, guidance):
        """v(x, level) for a batch whose rows match ``text``/``image_rows``/``guidance`` row for row.

        The transformer runs in its dtype on chunks of at most ``spec.max_batch`` rows; ``x`` and the returned
        velocity are float32, so the RF updates keep float32 arithmetic."""
        net = self.pipe.transformer
        mb = self.spec.max_batch

        def velocity(x: torch.Tensor, level: int) -> torch.Tensor:
            outs = []
            for lo in range(0, x.shape[0], mb):
                hi = min(x.shape[0], lo + mb)
                # a fresh dict per call: the transformer pops the image embeds out of it
                kwargs = {"ip_adapter_image_embeds": [image_rows[lo:hi]]} if image_rows is not None else None
                t = torch.full((hi - lo,), timesteps[level], dtype=net.dtype, device=x.device) / 1000
                outs.append(net(
                    hidden_states=x[lo:hi].to(net.dtype), timestep=t,
                    guidance=None if guidance is None else guidance[lo:hi],
                    pooled_projections=text.pooled[lo:hi], encoder_hidden_states=text.embeds[lo:hi],
                    txt_ids=text.text_ids, img_ids=image_ids, joint_attention_kwargs=kwargs, return_dict=False,
                )[0].float())
            return torch.cat(outs)

        return velocity

    @torch.no_grad()
    def judge_group(self, images: list[Image.Image], prompts: list[str], levels=None, seeds=None) -> torch.Tensor:
        """``TightInversion.judge_group`` for a flow model: the velocity error
        ``||(eps - y_0) - v_theta((1 - s) y_0 + s eps, c)||^2`` on shared noises (``seeds``) and levels
        (``levels``: sigmas, default ``JUDGE_SIGMAS``)."""
        sigmas = JUDGE_SIGMAS if levels is None else levels
        seeds = JUDGE_SEEDS if seeds is None else seeds
        pipe, n = self.pipe, len(images)
        z0 = self._encode_once(images)
        y0 = self.pack(z0)
        image_ids = pipe._prepare_latent_image_ids(1, z0.shape[-2] // 2, z0.shape[-1] // 2, self.device, self.dtype)
        text = embed_text(pipe, prompts)
        embeds = embed_image(pipe, images[0])  # at scale 0 any embeds of the right shape do
        image_rows = None if embeds is None else embeds[1].expand(n, *embeds[1].shape[1:])
        self._set_scale(0.0)
        velocity = self.velocity_fn(text, image_rows, image_ids, [s * 1000 for s in sigmas], self.guidance_rows([1.0] * n))
        err = torch.zeros(n, device=y0.device)
        for seed in seeds:
            noise = torch.randn((1, *y0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(y0)
            for level, s in enumerate(sigmas):
                err += (velocity((1 - s) * y0 + s * noise, level) - (noise - y0)).pow(2).flatten(1).mean(1)
        return err / (len(seeds) * len(sigmas))

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
    def run_group(self, requests, fitted, warnings, preset: Preset, progress=None) -> list[ItemResult]:
        """The FLUX recipe for same-size items, batched: inversion of all items in one batch, then all
        reconstructions, then every edit of every item (true CFG rows ``[negative x E, edit x E]``)."""
        pipe, b = self.pipe, len(requests)
        step, timings, pixels, z0, roundtrip = self.start_group(fitted, progress)
        edit_owner, regions, trajectory = self.edit_rows(requests, preset)
        with timings.phase("encode_s"):
            y0 = self.pack(z0)
            image_ids = pipe._prepare_latent_image_ids(1, z0.shape[-2] // 2, z0.shape[-1] // 2, self.device, self.dtype)
        h, w = fitted[0].height, fitted[0].width

        t0 = time.perf_counter()
        e = len(edit_owner)
        inversion_prompts = [r.source_prompt if preset.inversion_prompt == "source" else "" for r in requests]
        prompts = inversion_prompts + [p for r in requests for _, p in r.edits] + [preset.negative_prompt]
        if preset.negative_source:  # each edit's negative: its item's source prompt (after the fixed negative)
            prompts += [r.source_prompt for r in requests]
        text_all = embed_text(pipe, prompts)
        images = [embed_image(pipe, f) for f in fitted]
        timings.embed_s = time.perf_counter() - t0

        def image_rows(*parts: tuple[list[int], bool]):
            if images[0] is None:
                return None
            return torch.cat([images[k][1] if neg else images[k][0] for owners, neg in parts for k in owners])

        items = list(range(b))
        sigmas, timesteps = flux_sigmas(pipe, preset.steps, y0.shape[1])
        source = text_all.rows(items)
        plain = self.velocity_fn(source, image_rows((items, False)), image_ids, timesteps, self.guidance_rows([1.0] * b))
        t0 = time.perf_counter()
        self._set_scale(preset.inversion_scale)
        # One target noise per item, drawn as a one-item run draws it.
        noise = torch.cat([torch.randn((1, *y0.shape[1:]), generator=torch.Generator().manual_seed(preset.seed),
                                       dtype=torch.float32) for _ in items]).to(self.device)
        x1 = rf_inversion.invert_rf(plain, y0, sigmas, gamma=preset.gamma, target_noise=noise,
                                    fixed_point_iterations=preset.fixed_point_iterations, callback=step("invert"),
                                    trajectory=trajectory)
        blend = None
        if trajectory is not None:  # masks as packed tokens: each token's features carry its 2x2 cells' shares
            c, lh, lw = z0.shape[1:]
            masks = torch.cat([self.pack(region.latent_mask(r.mask, lh, lw).expand(1, c, lh, lw)) for r in regions])
            blend = region.Blend(masks.to(self.device), edit_owner, trajectory, y0, lambda i: i + 1,
                                 int(round(preset.region_blend_start * preset.steps)))
        timings.invert_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        redo = [k for k in items if requests[k].reconstruction is None]  # reconstructions to make
        outs = []
        if redo == items:
            outs.append(rf_inversion.denoise_rf(plain, x1, sigmas, callback=step("denoise")))
        elif redo:
            again = self.velocity_fn(text_all.rows(redo), image_rows((redo, False)), image_ids, timesteps,
                                     self.guidance_rows([1.0] * len(redo)))
            outs.append(rf_inversion.denoise_rf(again, x1[redo], sigmas, callback=step("denoise")))
        if e:
            self._set_scale(preset.edit_scale)
            negative_rows = ([b + e + 1 + k for k in edit_owner] if preset.negative_source else [b + e] * e)
            text = FluxText.cat([text_all.rows(negative_rows), text_all.rows(list(range(b, b + e)))])
            velocity = self.velocity_fn(text, image_rows((edit_owner, True), (edit_owner, False)), image_ids, timesteps,
                                        self.guidance_rows([preset.distilled_guidance] * 2 * e))

            def guided(x, level):
                out = velocity(torch.cat([x, x]), level)
                uncond, cond = out[:e], out[e:]
                return editing.guide(uncond, cond, preset.guidance, preset.cfg_sharpening)

            outs.append(rf_inversion.denoise_rf(
                guided, x1[edit_owner], sigmas, y0=y0[edit_owner], eta=preset.eta,
                eta_start=preset.eta_start, eta_stop=preset.eta_stop, callback=step("denoise"), blend=blend,
            ))
        timings.denoise_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = (self.decode_packed(torch.cat(outs), h, w) if outs
                   else torch.zeros((0, h, w, 3), dtype=torch.uint8, device=self.device))
        timings.decode_s = time.perf_counter() - t0
        return self.results(requests, fitted, pixels, roundtrip, decoded, edit_owner, timings, warnings, preset, redo)

    def _set_scale(self, scale: float) -> None:
        if has_adapter(self.pipe):
            self.pipe.set_ip_adapter_scale(float(scale))
