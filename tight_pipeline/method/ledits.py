"""LEDITS++ (Brack et al., CVPR 2024) as a peer editor on the same loaded SDXL weights, for benchmarks.

    preset: method: ledits_pp        (the ``ledits-pp`` presets; ``tight-pipeline benchmark --peers ledits-pp,...``)

Not Tight Inversion: diffusers' ``LEditsPPPipelineStableDiffusionXL`` (edit-friendly inversion with the DPM-Solver++
SDE sampler, then semantic guidance with its own implicit masks), text only, built on the engine's own modules so
that a benchmark compares editors on the same weights and photos. An edit prompt becomes LEDITS++ concepts by the
words it changes in the source prompt (``auto.rivals.changed_span``): "a red mug" -> "a blue mug" removes "red"
(reverse direction) and adds "blue"; an edit prompt that shares no word with its source is one concept, added.

LEDITS++ sets its own attention processors and calls the UNet without image embeds: while it runs, the UNet's
IP-Adapter processors and image projection are put aside, and put back afterwards (the engine's next Tight
Inversion group is unchanged; tested). Items run one at a time (LEDITS++ edits the last inverted image); the
reconstruction is LEDITS++'s own denoising without concepts.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from tight_pipeline.method.auto.rivals import changed_span
from tight_pipeline.method.items import InputError

SCHEDULER = dict(algorithm_type="sde-dpmsolver++", solver_order=2)  # the LEDITS++ authors' sampler


def concepts(source_prompt: str, prompt: str) -> tuple[list[str], list[bool]]:
    """LEDITS++ ``editing_prompt`` and ``reverse_editing_direction`` for an edit ``source_prompt`` -> ``prompt``."""
    removed, inserted, head, tail = changed_span(source_prompt, prompt)
    if not head and not tail:  # nothing in common: the whole edit prompt is the concept to add
        return [prompt], [False]
    out = [(removed, True), (inserted, False)]
    out = [(c, r) for c, r in out if c]
    return ([c for c, _ in out], [r for _, r in out]) if out else ([prompt], [False])


def check(spec, preset) -> None:
    if not spec.traits.ledits:
        raise InputError(f"preset {preset.name!r} runs LEDITS++ (ledits_pp), which needs an SDXL model; this one is "
                         f"{spec.family}")


@contextmanager
def text_only_unet(unet):
    """The UNet without its IP-Adapter while LEDITS++ runs: attention processors and image projection restored after."""
    from diffusers.models.attention_processor import Attention

    saved = {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)}
    projection = unet.encoder_hid_proj
    unet.encoder_hid_proj = None
    try:
        yield
    finally:
        for name, m in unet.named_modules():
            if isinstance(m, Attention) and name in saved:
                m.set_processor(saved[name])
        unet.encoder_hid_proj = projection


def pipeline(pipe):
    """A LEDITS++ pipeline sharing ``pipe``'s modules (no copy of any weight)."""
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusionXL

    parts = {k: getattr(pipe, k) for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")}
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **SCHEDULER)
    ledits = LEditsPPPipelineStableDiffusionXL(**parts, scheduler=scheduler)
    ledits.set_progress_bar_config(disable=True)
    return ledits


def run_group(engine, requests, fitted, warnings, preset, progress=None):
    """The engine's ``run_group`` for ``ledits_pp``: every item inverted and edited by LEDITS++, then scored and
    brought to the photo's size like any other output (``Engine.results``)."""
    step, timings, pixels, z0, roundtrip = engine.start_group(fitted, progress)
    edit_owner, _, _ = engine.edit_rows(requests, preset)
    ledits = pipeline(engine.pipe)
    h, w = fitted[0].height, fitted[0].width
    redo = [k for k, r in enumerate(requests) if r.reconstruction is None]
    latents: dict[tuple[int, int], torch.Tensor] = {}  # (item, -1 for its reconstruction / edit index) -> latent
    invert_s = denoise_s = 0.0
    with text_only_unet(engine.pipe.unet):
        for k, (req, image) in enumerate(zip(requests, fitted)):
            t0 = time.perf_counter()
            ledits.invert(image=image, source_prompt=req.source_prompt if preset.ledits_source_guidance > 0 else "",
                          source_guidance_scale=preset.ledits_source_guidance, num_inversion_steps=preset.steps,
                          skip=preset.ledits_skip, generator=torch.Generator().manual_seed(preset.seed),
                          height=h, width=w)
            invert_s += time.perf_counter() - t0
            _tick(step("invert"))
            t0 = time.perf_counter()
            jobs = ([(-1, None)] if k in redo else []) + list(enumerate(req.edits))
            for j, edit in jobs:
                kwargs = {}
                if edit is not None:
                    names, reverse = concepts(req.source_prompt, edit[1])
                    kwargs = dict(editing_prompt=names, reverse_editing_direction=reverse,
                                  edit_guidance_scale=[float(preset.guidance)] * len(names),
                                  edit_threshold=[float(preset.ledits_threshold)] * len(names))
                out = ledits(output_type="latent", return_dict=False, **kwargs)[0]
                latents[(k, j)] = out.float()  # scaled latents, as the engine's own (decode_tensor unscales)
                _tick(step("denoise"))
            denoise_s += time.perf_counter() - t0
    timings.invert_s, timings.denoise_s = invert_s, denoise_s  # the group's; ``results`` shares them per item
    t0 = time.perf_counter()
    rows = [latents[(k, -1)] for k in redo] + [latents[(k, j)] for k, r in enumerate(requests) for j in range(len(r.edits))]
    decoded = engine.decode_tensor(torch.cat(rows)) if rows else \
        torch.zeros((0, h, w, 3), dtype=torch.uint8, device=z0.device)
    timings.decode_s = time.perf_counter() - t0
    return engine.results(requests, fitted, pixels, roundtrip, decoded, edit_owner, timings, warnings, preset, redo)


def _tick(callback) -> None:
    if callback is not None:
        callback(0)
