"""The passthrough engine: the pipeline without a model, for measuring and testing it at catalog scale.

    tight-pipeline run --model passthrough --manifest m.jsonl --output out/

Each item is checked like a real one (prompts, aspect ratio), fitted to the spec's resolution and returned as
its own reconstruction and edits; scores are empty (nothing was inverted). Everything around it — manifest
streaming, Ray, PNG writes, score parts, resume, retries — is the real code path.

The fault drills' crashing engine is a subclass the tests load (``tight_pipeline/testing/engines.py``).
"""

from __future__ import annotations

import time

from PIL import Image

from tight_pipeline.method.items import (InputError, ItemRequest, ItemResult, Timings, check_regions,
                                         finish_regions, fit_size)
from tight_pipeline.method.presets import Preset


class PassthroughEngine:
    multiple = 8
    finish_outputs = True  # as Engine.finish_outputs

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def from_spec(cls, spec, clip_model: str | None = None) -> "PassthroughEngine":
        return cls(spec)

    def edit_item(self, image, source_prompt, edits, preset: Preset, progress=None) -> ItemResult:
        result = self.edit_items([ItemRequest(image, source_prompt, list(edits))], preset, progress)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def edit_items(self, requests: list[ItemRequest], preset: Preset, progress=None) -> list[ItemResult | Exception]:
        out: list[ItemResult | Exception] = []
        for req in requests:
            t0 = time.perf_counter()
            try:
                for what, prompt in [("source prompt", req.source_prompt)] + [(f"edit {e!r} prompt", p) for e, p in req.edits]:
                    if not isinstance(prompt, str):
                        raise InputError(f"{what} must be text")
                check_regions(req, preset)
                w, h = fit_size(req.image.width, req.image.height, self.spec.resolution, self.multiple)
                fitted = req.image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            except Exception as exc:  # noqa: BLE001 - the item's own result
                out.append(exc)
                continue
            if progress:
                progress("passthrough")
            timings = Timings(encode_s=time.perf_counter() - t0, batch_items=len(requests))
            empty = {k: None for k in ("psnr_vs_input", "ssim_vs_input", "psnr_vs_vae", "ssim_vs_vae",
                                       "vae_psnr_vs_input", "lpips_vs_input")}
            edit_scores = {e: {"edit_change": None, "edit_psnr_vs_input": None, "clip_score": None} for e, _ in req.edits}
            result = ItemResult(fitted, fitted, fitted, {e: fitted for e, _ in req.edits}, empty, edit_scores, timings, [])
            if self.finish_outputs:
                finish_regions(result, req, preset)
            out.append(result)
        if self.spec.hold_s > 0 and out:
            time.sleep(self.spec.hold_s * len(requests))  # the stand-in accelerator: busy, but not this CPU
        return out
