"""Items end to end: the Tight Inversion recipe, with scores and per-phase timings, batched across items.

    engine = load_engine(resolve_model_spec("catalog-demo"))      # method/factory.py
    result = engine.edit_item(image, "a coffee cup", [("blue", "a blue coffee cup")], load_preset("balanced"))
    results = engine.edit_items([ItemRequest(image, "a mug", [("red", "a red mug")]), ...], preset)

``edit_items`` runs a group of items (same preset) together: items of the same working size share every
network call — the inversion of all of them is one batch, their reconstructions and edits one batched
denoising — split into calls of at most ``spec.max_batch`` rows (a GPU at batch 1 idles; at batch 8 it does
not). Results equal one-item runs to float tolerance. Items of another size form their own group; an item
that fails its input checks gets its own exception, a batch that fails gets a ``BatchError`` per item (the
caller re-runs those items alone, so one bad item fails alone).

The recipe (per item, in ``run_group``):
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

from tight_pipeline.method import conditioning, editing, inversion, metrics, region
from tight_pipeline.method.specs import ModelSpec
from tight_pipeline.method.models import load_pipeline
from tight_pipeline.method.regularization import NoiseRegularization
from tight_pipeline.method.presets import Preset


# The zero-shot judge's fixed timesteps and noise seeds (``prompt_errors``): mid-range noise, where the
# prompt decides colour and material but the layout is already fixed by the image. On the demo model's training
# shots single timesteps from 300 to 700 separated landed from missed edits about equally (AUC 0.88-0.90 with
# two noises each); with rival prompts (method/auto/rivals.py) one timestep separated them as well as three or four
# did on the calibration shots (AUC 0.985 at t=500 vs 0.986), so one row per prompt: the rivals multiply the
# prompts, not the cost of each.
JUDGE_TIMESTEPS = (500,)
JUDGE_SEEDS = (0,)


class InputError(ValueError):
    """The item cannot be processed as given (the message says why); other items are unaffected."""


@dataclass(frozen=True)
class ItemRequest:
    """One item for ``edit_items``: its photo, source prompt and ``(edit_id, prompt)`` edits."""

    image: Image.Image
    source_prompt: str
    edits: list[tuple[str, str]]
    # A reconstruction of this item made before (automatic strength's later tries, at another scale): kept as the
    # item's reconstruction and its edits are scored against it; its denoising rows are not run again.
    reconstruction: Image.Image | None = None
    # Per edit id, where the edit may change the photo (method/region.py); an edit without one takes the preset's
    # ``region`` (whole or auto).
    regions: dict[str, region.EditRegion] = field(default_factory=dict)
    # The photo's own upright pixels (uint8 (H, W, 3 or 4), alpha kept) that outputs are composited on; None = the
    # pixels of ``image``.
    pixels: np.ndarray | None = None

    def photo(self) -> np.ndarray:
        return self.pixels if self.pixels is not None else np.asarray(self.image.convert("RGB"))

    def region_of(self, edit_id: str, preset: Preset) -> region.EditRegion:
        return self.regions.get(edit_id) or region.EditRegion(preset.region)


class BatchError(RuntimeError):
    """A batch of several items failed as a whole (``cause``); re-run its items one at a time to find which."""

    def __init__(self, cause: BaseException, size: int):
        super().__init__(f"a batch of {size} items failed: {type(cause).__name__}: {cause}")
        self.cause = cause
        self.size = size


@dataclass
class ItemResult:
    """An item's images at the working size (``input``: the photo fitted to it), its outputs at the photo's own
    size (``full_*``: the reconstruction brought up, each edit composited by its region; ``photo``: the photo's
    own pixels) and the scores (``edit_scores`` include each edit's region fields, ``region.finish``)."""

    input: Image.Image  # the photo fitted to the working resolution
    vae_roundtrip: Image.Image
    reconstruction: Image.Image
    edits: dict[str, Image.Image]
    scores: dict[str, float | None]
    edit_scores: dict[str, dict[str, float | None]]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    photo: np.ndarray | None = None
    full_reconstruction: np.ndarray | None = None
    full_edits: dict[str, np.ndarray] = field(default_factory=dict)
    region_masks: dict[str, np.ndarray] = field(default_factory=dict)


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
        """This class's engine for an SD / SDXL ``spec`` (``engine.factory.load_engine`` picks the class by family)."""
        if spec.family not in ("sdxl", "sd"):
            raise ValueError(f"model {spec.name!r} is a {spec.family} model: load it with "
                             "tight_pipeline.method.factory.load_engine")
        pipe = load_pipeline(spec)
        scorer = metrics.ClipScorer(clip_model, device=str(pipe.unet.device)) if clip_model else None
        return cls(pipe, spec, scorer)

    # -- images <-> latents ---------------------------------------------------------------------------
    def prepare_image(self, image: Image.Image) -> Image.Image:
        w, h = fit_size(image.width, image.height, self.spec.resolution, self.multiple)
        return image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Same-size photos -> (B, H, W, 3) uint8 on the engine's device."""
        return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).to(self.device)

    @torch.no_grad()
    def encode(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Photo(s) -> float32 latents z_0 (the VAE posterior mean, scaled); a PIL image or (B, H, W, 3) uint8."""
        vae = self.pipe.vae
        pixels = self.pixels([image]) if isinstance(image, Image.Image) else image
        out = []
        for lo in range(0, pixels.shape[0], self.spec.vae_batch):
            x = pixels[lo : lo + self.spec.vae_batch].permute(0, 3, 1, 2).float() / 127.5 - 1.0
            out.append(self._encode_pixels(x.to(self.device, vae.dtype)))
        return torch.cat(out)

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

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return to_images(self.decode_tensor(latents))

    def result(self, fitted: Image.Image, pixels: torch.Tensor, roundtrip: torch.Tensor, decoded: torch.Tensor,
               edits: list[tuple[str, str]], timings: dict, warnings: list[str]) -> ItemResult:
        """Decoded ``[reconstruction, *edits]`` (uint8 tensors on the device) -> the scored ``ItemResult``.

        Scores are computed on the device, where the images already are; only the finished images go to the CPU.
        """
        t0 = time.perf_counter()
        ids = [e for e, _ in edits]
        scores, edit_scores = self.score(pixels, roundtrip, decoded[0], dict(zip(ids, decoded[1:])), edits)
        images = to_images(torch.cat([roundtrip[None], decoded]))
        timings["score_s"] = time.perf_counter() - t0
        return ItemResult(fitted, images[0], images[1], dict(zip(ids, images[2:])), scores, edit_scores, timings, warnings)

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
        clip = (self.clip.score(to_images(torch.stack(list(edit_images.values()))), [p for _, p in edits])
                if self.clip and edits else [None] * n)
        edit_scores = {
            edit_id: {
                "edit_change": metrics.mean_abs_change(edit_images[edit_id], reconstruction),
                "edit_psnr_vs_input": metrics.psnr(edit_images[edit_id], fitted),
                "clip_score": clip[i],
            }
            for i, (edit_id, _) in enumerate(edits)
        }
        return scores, edit_scores

    # -- the zero-shot judge of automatic strength (method/auto/strength.py) -----------------------------------
    @torch.no_grad()
    def prompt_errors(self, images: list[Image.Image], prompts: list[str], timesteps: tuple[int, ...] = JUDGE_TIMESTEPS,
                      seeds: tuple[int, ...] = JUDGE_SEEDS) -> list[float]:
        """How badly each prompt explains its image: the text-only model's mean denoising error.

        The diffusion model as a zero-shot classifier (Li et al. 2023, "Your diffusion model is secretly a
        zero-shot classifier", eq. 5): ``err(x, c) = E_{t, eps} ||eps - eps_theta(sqrt(a_t) z_0 + sqrt(1 - a_t) eps, c)||^2``
        over fixed timesteps and noises, the same for every row (paired: two prompts' or two images' errors
        differ by what they show, not by the draw). Text only (adapter scale 0): the question is about the text,
        and the image condition would explain the image whatever the prompt. Lower: the prompt fits better."""
        out = [0.0] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.size, []).append(i)
        pipe = self.pipe
        prediction_type = pipe.scheduler.config.prediction_type
        for (w, h), index in groups.items():
            z0 = self._encode_once([images[i] for i in index])
            text = conditioning.embed_text(pipe, [prompts[i] for i in index], h, w)
            # At scale 0 the adapter's output is multiplied by 0: any embeds of the right shape do, so the image
            # encoder runs once per size, not once per image.
            embeds = conditioning.embed_image(pipe, images[index[0]])
            image_rows = None if embeds is None else embeds.negative.expand(len(index), *embeds.negative.shape[1:])
            conditioning.set_adapter_scale(pipe, 0.0)
            err = torch.zeros(len(index), device=z0.device)
            for seed in seeds:  # the same noise for every row: a result does not depend on its batch
                noise = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(seed)).to(z0)
                for t in timesteps:
                    alpha = float(pipe.scheduler.alphas_cumprod[t])
                    xt = alpha**0.5 * z0 + (1 - alpha) ** 0.5 * noise
                    pred = conditioning.predict_noise(pipe, xt, torch.tensor(t, device=z0.device), text, image_rows,
                                                      max_batch=self.spec.max_batch)
                    _, eps = inversion.split_prediction(pred, xt, alpha, prediction_type)
                    err += (eps - noise).pow(2).flatten(1).mean(1)
            for j, i in enumerate(index):
                out[i] = float(err[j]) / (len(seeds) * len(timesteps))
        return out

    def _encode_once(self, images: list[Image.Image]) -> torch.Tensor:
        """Latents of same-size ``images``, one row each, encoding an image that appears several times once
        (the judge asks two prompts about every edited image)."""
        first = {id(im): k for k, im in reversed(list(enumerate(images)))}
        order = list(dict.fromkeys(id(im) for im in images))
        z = self.encode(self.pixels([images[first[key]] for key in order]))
        return z[[order.index(id(im)) for im in images]]

    def check_inputs(self, preset: Preset, source_prompt: str, edits: list[tuple[str, str]]) -> list[str]:
        """Raise ``InputError`` for a method of another family or a prompt that is not text; warnings for long
        prompts and for edits whose guidance has nothing to push (edit prompt = negative prompt)."""
        self.check_method(preset)
        warnings = self.check_prompt(source_prompt, "source prompt")
        for edit_id, prompt in edits:
            warnings += self.check_prompt(prompt, f"edit {edit_id!r} prompt")
            negative = source_prompt if preset.negative_source else preset.negative_prompt
            if prompt.strip() == negative.strip():
                warnings.append(f"edit {edit_id!r} prompt is the same as its negative prompt ({negative.strip()!r}): "
                                "guidance has nothing to push towards, the edit is a reconstruction at the edit scale")
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
        # An empty prompt is accepted (the model's empty prompt, as the authors' pipelines accept it).
        if not isinstance(prompt, str):
            raise InputError(f"{what} must be text, got {type(prompt).__name__}")
        n, limit = self.prompt_tokens(prompt)
        return [f"{what} has {n} tokens; the model reads the first {limit}, the rest is ignored"] if n > limit else []

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
        return inversion.invert_renoise(
            self.pipe, z0, schedule, text, image_rows, iterations=preset.renoise_iterations,
            average_last=preset.renoise_average_last, callback=callback, max_batch=mb,
            early_t=preset.renoise_early_t, early_average=preset.renoise_early_average, reg=reg, seed=preset.seed,
            trajectory=trajectory,
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
        result = self.edit_items([ItemRequest(image, source_prompt, list(edits))], preset, progress)[0]
        if isinstance(result, BaseException):
            raise result.cause if isinstance(result, BatchError) else result
        return result

    def edit_items(self, requests: list[ItemRequest], preset: Preset, progress=None) -> list[ItemResult | Exception]:
        """Every request's ``ItemResult``, or the exception that item ended with (never raised: the caller decides).

        Items whose inputs fail the checks get their ``InputError``; the rest are grouped by working size and
        each group runs as one batch. A group that fails as a whole gives every item of it a ``BatchError``.
        """
        results: list[ItemResult | Exception | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[tuple[int, Image.Image, list[str]]]] = {}
        for i, req in enumerate(requests):
            try:
                warnings = self.check_inputs(preset, req.source_prompt, req.edits)
                check_regions(req, preset)
                fitted = self.prepare_image(req.image)
            except Exception as exc:  # noqa: BLE001 - an item's bad input is that item's result
                results[i] = exc
                continue
            groups.setdefault(fitted.size, []).append((i, fitted, warnings))
        for members in groups.values():
            index = [i for i, _, _ in members]
            try:
                outs = self.run_group([requests[i] for i in index], [f for _, f, _ in members],
                                      [w for _, _, w in members], preset, progress)
            except Exception as exc:  # noqa: BLE001
                outs = [exc] * len(index) if len(index) == 1 else [BatchError(exc, len(index))] * len(index)
            for i, out in zip(index, outs):
                results[i] = out
        return results

    def run_group(self, requests: list[ItemRequest], fitted: list[Image.Image], warnings: list[list[str]],
                  preset: Preset, progress=None) -> list[ItemResult]:
        """The recipe for same-size items, batched: one row per item in the inversion; rows
        ``[reconstruction x B, unconditional x E, conditional x E]`` (E = all edits of all items) in denoising.
        Phase times are the group's, divided by its size (``batch_items`` says how many shared them)."""
        step = (lambda phase: (lambda i: progress(phase))) if progress else (lambda phase: None)
        pipe, b = self.pipe, len(requests)
        timings: dict[str, float] = {"batch_items": float(b)}

        t0 = time.perf_counter()
        pixels = self.pixels(fitted)
        z0 = self.encode(pixels)
        roundtrip = self.decode_tensor(z0)
        timings["encode_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        h, w = fitted[0].height, fitted[0].width
        edit_owner = [k for k, r in enumerate(requests) for _ in r.edits]  # item of every edit row
        e = len(edit_owner)
        prompts = [r.source_prompt for r in requests] + [p for r in requests for _, p in r.edits] + [preset.negative_prompt]
        text_all = conditioning.embed_text(pipe, prompts, h, w)
        negative = text_all.rows([len(prompts) - 1])
        images = [conditioning.embed_image(pipe, f) for f in fitted]
        timings["embed_s"] = time.perf_counter() - t0

        def image_rows(*parts: tuple[list[int], bool]):
            """Adapter embeds for rows of the given (items, negative?) parts, in order; None without an adapter."""
            if images[0] is None:
                return None
            return torch.cat([images[k].negative if neg else images[k].positive for owners, neg in parts for k in owners])

        schedule = inversion.make_schedule(pipe.scheduler, preset.steps)
        items = list(range(b))
        redo = [k for k in items if requests[k].reconstruction is None]  # reconstructions to make
        source = text_all.rows(items)
        t0 = time.perf_counter()
        conditioning.set_adapter_scale(pipe, preset.inversion_scale)
        regions = [requests[k].region_of(edit_id, preset) for k in items for edit_id, _ in requests[k].edits]
        trajectory = {} if any(r.mode == "mask" for r in regions) else None  # kept only for blending
        z_T, noises = self.invert(z0, source, image_rows((items, False)), schedule, preset, step("invert"), trajectory)
        blend = None if trajectory is None else region.Blend(
            torch.cat([region.latent_mask(r.mask, *z0.shape[-2:]) for r in regions]).to(z0.device), edit_owner,
            trajectory, z0, lambda i: schedule.timesteps[i] - schedule.step_ratio,
            int(round(preset.region_blend_start * preset.steps)))
        timings["invert_s"] = time.perf_counter() - t0

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
                                _pick(noises, rows), max_batch=mb, sharpening=preset.cfg_sharpening, blend=blend)
        else:
            z_rec = z_T[:0]
            if redo:
                z_rec = editing.denoise(pipe, z_T[redo], schedule, text_all.rows(redo), image_rows((redo, False)),
                                        len(redo), 0, 1.0, step("denoise"), _pick(noises, redo), max_batch=mb)
            conditioning.set_adapter_scale(pipe, preset.edit_scale)
            z_edit = editing.denoise(pipe, z_T[edit_owner], schedule, guided_text,
                                     image_rows((edit_owner, True), (edit_owner, False)), 0, e, preset.guidance,
                                     step("denoise"), _pick(noises, edit_owner), max_batch=mb,
                                     sharpening=preset.cfg_sharpening, blend=blend)
            z = torch.cat([z_rec, z_edit])
        timings["denoise_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = self.decode_tensor(z) if len(z) else torch.zeros((0, h, w, 3), dtype=torch.uint8, device=z.device)
        timings["decode_s"] = time.perf_counter() - t0
        return self.results(requests, fitted, pixels, roundtrip, decoded, edit_owner, timings, warnings, preset, redo)

    def results(self, requests, fitted, pixels, roundtrip, decoded, edit_owner, timings, warnings, preset: Preset,
                redo: list[int] | None = None) -> list[ItemResult]:
        """Split a group's decoded rows ``[reconstruction x len(redo), edits...]`` per item, score each item and
        make its outputs at the photo's size (``finish_regions``); items not in ``redo`` (all are, by default)
        bring their reconstruction in their request."""
        b = len(requests)
        if redo is not None and len(redo) < b:
            made = dict(zip(redo, decoded[: len(redo)]))
            given = [made[k] if k in made else torch.from_numpy(np.array(requests[k].reconstruction.convert("RGB"))
                                                                 ).to(decoded.device) for k in range(b)]
            decoded = torch.cat([torch.stack(given), decoded[len(redo) :]])
        shared = {k: v / b for k, v in timings.items() if k != "batch_items"}
        out = []
        for k, req in enumerate(requests):
            mine = [b + j for j, owner in enumerate(edit_owner) if owner == k]
            rows = decoded[[k] + mine]
            result = self.result(fitted[k], pixels[k], roundtrip[k], rows, req.edits,
                                 {**shared, "batch_items": timings["batch_items"]}, warnings[k])
            t0 = time.perf_counter()
            finish_regions(result, req, preset)
            result.timings["region_s"] = time.perf_counter() - t0
            out.append(result)
        return out


def check_regions(request: ItemRequest, preset: Preset) -> None:
    """``InputError`` for a given mask whose size is not the photo's, or a region for an edit the item lacks."""
    ids = {edit_id for edit_id, _ in request.edits}
    height, width = request.photo().shape[:2]
    for edit_id, reg in request.regions.items():
        if edit_id not in ids:
            raise InputError(f"a region is given for edit {edit_id!r}, which the item does not have")
        if reg.mask is not None and reg.mask.shape != (height, width):
            raise InputError(f"the mask of edit {edit_id!r} is {reg.mask.shape[1]}x{reg.mask.shape[0]}, the photo is "
                             f"{width}x{height}: a mask must have the photo's size")


def finish_regions(result: ItemResult, request: ItemRequest, preset: Preset) -> None:
    """Fill ``result``'s outputs at the photo's own size: the reconstruction brought up; every edit composited by
    its region (``region.finish``), its region fields added to its scores."""
    photo = request.photo()
    recon = np.asarray(result.reconstruction.convert("RGB"))
    result.photo = photo
    result.full_reconstruction = region.upsize(recon, photo)
    for edit_id, _ in request.edits:
        out, fields, mask = region.finish(photo, np.asarray(result.edits[edit_id].convert("RGB")), recon,
                                          request.region_of(edit_id, preset), preset.region_fill)
        result.full_edits[edit_id] = out
        result.region_masks[edit_id] = mask
        result.edit_scores[edit_id].update(fields)
        if fields["region_source"] != "whole" and fields["region_fraction"] == 0.0:
            result.warnings.append(f"edit {edit_id!r}: its region is empty ({fields['region_source']}): the output is "
                                   "the photo unchanged")


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, H, W, 3) uint8 tensor -> PIL images (one copy to the CPU)."""
    return [Image.fromarray(a) for a in pixels.cpu().numpy()]


def _pick(noises: list[torch.Tensor] | None, rows: list[int]) -> list[torch.Tensor] | None:
    """Per-step noise maps for the given rows (each row follows its item's maps)."""
    return None if noises is None else [n[rows] for n in noises]


def _repeat(cond: conditioning.TextCondition, n: int) -> conditioning.TextCondition:
    return conditioning.TextCondition.cat([cond] * n) if n else cond.rows([])
