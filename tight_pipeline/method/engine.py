"""What every diffusion engine shares: items in, batched by working size, results out.

    engine = load_engine(resolve_model_spec("catalog-demo"))      # method/factory.py picks the family's class
    result = engine.edit_item(image, "a coffee cup", [("blue", "a blue coffee cup")], load_preset("balanced"))
    results = engine.edit_items([ItemRequest(image, "a mug", [("red", "a red mug")]), ...], preset)

``edit_items`` runs a group of items (same preset) together: items of the same working size share every
network call — the inversion of all of them is one batch, their reconstructions and edits one batched
denoising — split into calls of at most ``spec.max_batch`` rows (a GPU at batch 1 idles; at batch 8 it does
not). Results equal one-item runs to float tolerance. Items of another size form their own group; an item
that fails its input checks gets its own exception, a batch that fails gets a ``BatchError`` per item (the
caller re-runs those items alone, so one bad item fails alone).

A family (``sdxl.TightInversion``, ``flux.FluxTightInversion``) supplies its network, its latents and its recipe
for a group of same-size items (``run_group``), and its zero-shot judge's error for a group (``judge_group``);
everything around them is here: fitting and encoding photos, scores, input checks, splitting a group's decoded
rows per item and bringing them to the photo's size (``items.finish_regions``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tight_pipeline.method import metrics
from tight_pipeline.method.items import (BatchError, InputError, ItemRequest, ItemResult, Timings, check_regions,
                                         finish_regions, fit_size, to_images)
from tight_pipeline.method.models import load_pipeline
from tight_pipeline.method.presets import Preset
from tight_pipeline.method.specs import ModelSpec


class Engine:
    """One loaded diffusers pipeline (one per process / Ray actor) and the recipe of its family."""

    families: tuple[str, ...] = ()
    # True: results carry their outputs at the photo's size (``finish_regions``). A worker that overlaps CPU work
    # with the accelerator sets it False and finishes each result itself, off the model's critical path.
    finish_outputs: bool = True

    def __init__(self, pipe, spec: ModelSpec, clip_scorer: metrics.ClipScorer | None = None):
        self.pipe = pipe
        self.spec = spec
        self.clip = clip_scorer
        network = self.network_of(pipe)
        self.multiple = self.latent_multiple(pipe)  # working sizes are multiples of this
        self.device = network.device
        self.dtype = network.dtype

    @classmethod
    def from_spec(cls, spec: ModelSpec, clip_model: str | None = None) -> "Engine":
        """This class's engine for a ``spec`` of its family (``method.factory.load_engine`` picks the class)."""
        if spec.family not in cls.families:
            raise ValueError(f"model {spec.name!r} is a {spec.family} model: load it with "
                             "tight_pipeline.method.factory.load_engine")
        pipe = load_pipeline(spec)
        scorer = metrics.ClipScorer(clip_model, device=str(cls.network_of(pipe).device)) if clip_model else None
        return cls(pipe, spec, scorer)

    # -- what a family supplies ------------------------------------------------------------------------------
    @staticmethod
    def network_of(pipe):
        """The denoising network (its device and dtype are the engine's)."""
        raise NotImplementedError

    @staticmethod
    def latent_multiple(pipe) -> int:
        raise NotImplementedError

    def check_method(self, preset: Preset) -> None:
        """``InputError`` for a preset whose method this family cannot run."""
        raise NotImplementedError

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        """(tokens in ``prompt``, tokens the model reads) for the text encoder that limits prompts."""
        raise NotImplementedError

    def _encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], the VAE's dtype → float32 latents."""
        raise NotImplementedError

    def decode_tensor(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, H, W, 3) uint8 on the device."""
        raise NotImplementedError

    def run_group(self, requests: list[ItemRequest], fitted: list[Image.Image], warnings: list[list[str]],
                  preset: Preset, progress=None) -> list[ItemResult]:
        """The recipe for same-size items, batched; ends with ``self.results``."""
        raise NotImplementedError

    def judge_group(self, images: list[Image.Image], prompts: list[str], levels=None, seeds=None) -> torch.Tensor:
        """The judge's error of each (same-size image, prompt) row (``prompt_errors``)."""
        raise NotImplementedError

    # -- what every recipe starts with ------------------------------------------------------------------------
    def start_group(self, fitted: list[Image.Image], progress=None):
        """A per-phase progress callback, the group's ``Timings`` and its encoding (timed as ``encode_s``):
        ``(step, timings, pixels, z0, roundtrip)``."""
        step = (lambda phase: (lambda i: progress(phase))) if progress else (lambda phase: None)
        timings = Timings(batch_items=len(fitted))
        with timings.phase("encode_s"):
            pixels = self.pixels(fitted)
            z0 = self.encode(pixels)
            roundtrip = self.decode_tensor(z0)
        return step, timings, pixels, z0, roundtrip

    @staticmethod
    def edit_rows(requests: list[ItemRequest], preset: Preset):
        """``(edit_owner, regions, trajectory)``: the item of every edit row, each edit's region, and a dict for the
        inversion's trajectory when a given mask will blend (``None`` otherwise: nothing is kept)."""
        edit_owner = [k for k, r in enumerate(requests) for _ in r.edits]
        regions = [r.region_of(edit_id, preset) for r in requests for edit_id, _ in r.edits]
        trajectory = {} if any(r.mode == "mask" for r in regions) else None
        return edit_owner, regions, trajectory

    # -- images <-> latents ------------------------------------------------------------------------------
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

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return to_images(self.decode_tensor(latents))

    def _encode_once(self, images: list[Image.Image]) -> torch.Tensor:
        """Latents of same-size ``images``, one row each, encoding an image that appears several times once
        (the judge asks two prompts about every edited image)."""
        first = {id(im): k for k, im in reversed(list(enumerate(images)))}
        order = list(dict.fromkeys(id(im) for im in images))
        z = self.encode(self.pixels([images[first[key]] for key in order]))
        return z[[order.index(id(im)) for im in images]]

    # -- the zero-shot judge of automatic strength (method/auto/strength.py) -----------------------------------
    @torch.no_grad()
    def prompt_errors(self, images: list[Image.Image], prompts: list[str], levels=None, seeds=None) -> list[float]:
        """How badly each prompt explains its image: the text-only model's mean denoising error (lower: the prompt
        fits better), the family's ``judge_group`` over each group of same-size images."""
        out = [0.0] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.size, []).append(i)
        for index in groups.values():
            errors = self.judge_group([images[i] for i in index], [prompts[i] for i in index], levels, seeds)
            for j, i in enumerate(index):
                out[i] = float(errors[j])
        return out

    # -- input checks -------------------------------------------------------------------------------------------
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

    def check_prompt(self, prompt: str, what: str) -> list[str]:
        # An empty prompt is accepted (the model's empty prompt, as the authors' pipelines accept it).
        if not isinstance(prompt, str):
            raise InputError(f"{what} must be text, got {type(prompt).__name__}")
        n, limit = self.prompt_tokens(prompt)
        return [f"{what} has {n} tokens; the model reads the first {limit}, the rest is ignored"] if n > limit else []

    # -- items in, results out ----------------------------------------------------------------------------------
    def edit_item(self, image: Image.Image, source_prompt: str, edits: list[tuple[str, str]], preset: Preset,
                  progress=None) -> ItemResult:
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

    def results(self, requests, fitted, pixels, roundtrip, decoded, edit_owner, timings: Timings, warnings,
                preset: Preset, redo: list[int] | None = None) -> list[ItemResult]:
        """Split a group's decoded rows ``[reconstruction x len(redo), edits...]`` per item, score each item and
        make its outputs at the photo's size (``finish_regions``); items not in ``redo`` (all are, by default)
        bring their reconstruction in their request."""
        b = len(requests)
        if redo is not None and len(redo) < b:
            made = dict(zip(redo, decoded[: len(redo)]))
            given = [made[k] if k in made else torch.from_numpy(np.array(requests[k].reconstruction.convert("RGB"))
                                                                 ).to(decoded.device) for k in range(b)]
            decoded = torch.cat([torch.stack(given), decoded[len(redo) :]])
        shared = timings.per_item()
        out = []
        for k, req in enumerate(requests):
            mine = [b + j for j, owner in enumerate(edit_owner) if owner == k]
            result = self.result(fitted[k], pixels[k], roundtrip[k], decoded[[k] + mine], req.edits,
                                 Timings(**shared.as_dict()), warnings[k])
            if self.finish_outputs:
                finish_regions(result, req, preset)
            out.append(result)
        return out

    def result(self, fitted: Image.Image, pixels: torch.Tensor, roundtrip: torch.Tensor, decoded: torch.Tensor,
               edits: list[tuple[str, str]], timings: Timings, warnings: list[str]) -> ItemResult:
        """Decoded ``[reconstruction, *edits]`` (uint8 tensors on the device) -> the scored ``ItemResult``.

        Scores are computed on the device, where the images already are; only the finished images go to the CPU.
        """
        with timings.phase("score_s"):
            ids = [e for e, _ in edits]
            scores, edit_scores = self.score(pixels, roundtrip, decoded[0], dict(zip(ids, decoded[1:])), edits)
            images = to_images(torch.cat([roundtrip[None], decoded]))
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
