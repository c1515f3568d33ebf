"""Automatic strength: every item and edit gets the adapter scale it needs, chosen by a check that needs no labels.

    preset = load_preset("balanced@auto")            # or a preset with ``auto_scales: [1.0, 0.4, 0.0]``
    results = edit_items_auto(engine, requests, preset)

The paper leaves the choice of the image condition's strength open: a strong condition keeps the photo, a weak
one lets an edit move it. One scale for a whole catalog is wrong for some items either way (a colour change lands
under a strong condition, a new material may need a weak one). Here each edit is tried at the candidate scales,
**strongest first**, and keeps the first one whose result passes two checks computed from what a catalog run
has (the photo, the source prompt, the edit prompt, the run's other prompts) — never from masks, labels or an
evaluation's classifier:

- *landed*: the edited image shows the edit prompt rather than the source prompt **or any rival** — the other
  answers the run asks about (``method/auto/rivals.py``: every phrase the run's edits take out or put in, "red",
  "teal", "blue", ...; plus the preset's ``auto_rivals``). A judge scores how well each prompt explains the
  image (``fits``): with a local CLIP (``ModelSpec.clip`` or ``TIGHT_PIPELINE_CLIP_MODEL``) the cosine
  similarity; without one the diffusion model itself (Li et al. 2023, "Your diffusion model is secretly a
  zero-shot classifier"), minus the log of the text-only model's denoising error at fixed timesteps and noises.
  The edit's *margin* is its prompt's fit minus the best of the others'. The photo's own margin (its source
  prompt over the edit prompt and the rivals) sets the scale: the edit landed when its margin reaches
  ``preset.auto_min_landed`` of the photo's. Why rivals: a failed colour edit rarely keeps its colour, it lands
  on a neighbouring one; against the source prompt alone it still "fits the edit prompt better" (measured on
  the demo model: that check agreed with the colour classifier on 65-76 % of held-out edits, with rivals on
  85-92 %: ``docs/demo-model/auto``). With ``auto_max_rivals: 0`` the check is the earlier source-vs-edit one.
- *faithful*: the part of the photo the edit did not touch survived: PSNR against the input over the
  least-changed half of the pixels (an edit of the product leaves the other half as it was; an edit that
  drifted everywhere does not), at least ``preset.auto_min_kept_db``.

Rule (``choose``): the strongest scale whose edit landed and stayed faithful; if edits landed but none stayed
faithful, the strongest that landed (flagged); if none landed, the weakest scale (flagged). Trying strongest
first makes the search stop at the answer: an edit that lands at the first scale costs one run, as a fixed
preset does. The tries are the edits themselves, made with the preset's full settings (no separate cheap probe
to redo), and the edits still open after a try run again as one batch at the next scale, so on a GPU the
items of a batch keep sharing every network call. The item's reconstruction (and its scores) is the one made at
the strongest scale; later tries do not make it again (``ItemRequest.reconstruction``) and score their edits
against it, so an edit's ``edit_change`` compares the two images its row shows, whichever scale it kept.
"""

from __future__ import annotations

import dataclasses

import json
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tight_pipeline.method.auto.rivals import rival_phrases, rival_prompts, run_vocabulary
from tight_pipeline.method.items import InputError, ItemRequest, ItemResult, Timings
from tight_pipeline.method.presets import Preset

KEEP_FRACTION = 0.5  # the least-changed share of pixels the faithfulness check reads


@dataclass(frozen=True)
class Candidate:
    """One tried scale of one edit and what the checks found."""

    scale: float
    landed: float  # landed check (``landed_score``): >= auto_min_landed means the edit shows the edit prompt
    kept_db: float  # faithful check: PSNR vs the input over the least-changed half of the pixels
    seen: str = ""  # the prompt the judge found next best (the source or a rival): what a miss looked like

    def to_dict(self) -> dict:
        out = {"scale": self.scale, "landed": round(self.landed, 4), "kept_db": round(self.kept_db, 3)}
        return {**out, "seen": self.seen} if self.seen else out


@dataclass(frozen=True)
class Choice:
    scale: float
    reason: str  # landed | landed-not-faithful | none-landed
    flagged: bool


def choose(candidates: list[Candidate], min_landed: float, min_kept_db: float) -> Choice | None:
    """The rule over candidates tried strongest first; ``None`` while a weaker, untried scale could still win.

    Called with every candidate tried so far: it returns the strongest that landed and stayed faithful as soon as
    there is one; ``None`` over the full list means none did (``final_choice`` then falls back)."""
    ordered = sorted(candidates, key=lambda c: -c.scale)
    for c in ordered:
        if c.landed >= min_landed and c.kept_db >= min_kept_db:
            return Choice(c.scale, "landed", False)
    return None


def final_choice(candidates: list[Candidate], min_landed: float, min_kept_db: float) -> Choice:
    """``choose`` over every candidate, with the fallbacks: strongest landed (not faithful), else the weakest."""
    picked = choose(candidates, min_landed, min_kept_db)
    if picked is not None:
        return picked
    ordered = sorted(candidates, key=lambda c: -c.scale)
    landed = [c for c in ordered if c.landed >= min_landed]
    if landed:
        return Choice(landed[0].scale, "landed-not-faithful", True)
    return Choice(ordered[-1].scale, "none-landed", True)


def kept_psnr(edit, photo, fraction: float = KEEP_FRACTION) -> float:
    """PSNR (dB) of ``edit`` against ``photo`` over the ``fraction`` of pixels the edit changed least."""
    a = np.asarray(edit.convert("RGB"), np.float64)
    b = np.asarray(photo.convert("RGB"), np.float64)
    err = ((a - b) ** 2).mean(-1).ravel()
    k = max(1, int(err.size * fraction))
    mse = float(np.partition(err, k - 1)[:k].mean())
    return 100.0 if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def fits(engine, images, prompts: list[str]) -> tuple[list[float], str]:
    """How well each prompt explains its image (higher: better), and the judge's name.

    CLIP (when the engine has a scorer): 100 x cosine similarity. Otherwise the diffusion model itself
    (``engine.prompt_errors``, Li et al. 2023): minus the log of its denoising error under the prompt."""
    if getattr(engine, "clip", None) is not None:
        return [100.0 * v for v in engine.clip.score(list(images), list(prompts))], "clip"
    judge = getattr(engine, "prompt_errors", None)
    if judge is None:
        raise InputError(f"automatic strength needs a diffusion model or a CLIP model to judge edits; "
                         f"{type(engine).__name__} has neither")
    return [-float(np.log(max(e, 1e-12))) for e in judge(list(images), list(prompts))], "diffusion"


@dataclass(frozen=True)
class Question:
    """What the landed check asks about one edit: which of its prompts explains an image best."""

    source: str
    edit: str
    rivals: tuple[str, ...]  # rival edit prompts (``rival_prompts``)

    @property
    def prompts(self) -> list[str]:
        return [self.edit, self.source, *self.rivals]


def margins(engine, images, questions: list[Question]) -> tuple[list[tuple[float, float, str]], str]:
    """Per image, one judge call for all: ``(edit margin, source margin, best other prompt)``.

    ``edit margin`` = fit(edit prompt) - best fit among the source prompt and the rivals (> 0: the edit prompt
    explains the image best); ``source margin`` = fit(source prompt) - best among the edit prompt and the rivals
    (> 0: the image still shows its source, as the photo should). The best other prompt names what the judge
    saw instead."""
    flat_images, flat_prompts = [], []
    for image, q in zip(images, questions):
        flat_images += [image] * len(q.prompts)
        flat_prompts += q.prompts
    values, name = fits(engine, flat_images, flat_prompts)
    out, at = [], 0
    for q in questions:
        v = values[at:at + len(q.prompts)]
        at += len(q.prompts)
        others = v[1:]
        best = int(np.argmax(others)) + 1
        source_margin = v[1] - max([v[0], *v[2:]])
        out.append((v[0] - v[best], source_margin, q.prompts[best]))
    return out, name


def landed_score(edit_margin: float, photo_margin: float) -> float:
    """The edit's margin as a fraction of the photo's: 1 = the edit prompt explains the edited image as clearly
    as the source prompt explains the photo, 0 = the judge finds another prompt as good, < 0 = it finds the
    source or a rival better. The photo's margin sets the scale, so a threshold means the same for any model
    and judge (a judge that cannot read the photo, margin <= 0, is capped to a small positive scale)."""
    return edit_margin / max(photo_margin, 1e-3)


def questions_for(requests: list[ItemRequest], preset: Preset,
                  rivals: tuple[str, ...] | None = None) -> dict[tuple[int, str], Question]:
    """The landed check's question for every ``(request index, edit id)``: the edit prompt, the source prompt and
    the rival prompts made from the preset's ``auto_rivals`` and the run's ``rivals`` (``None``: the requests'
    own), at most ``auto_max_rivals``."""
    limit = preset.auto_max_rivals
    if rivals is None:
        rivals = rival_phrases(run_vocabulary((r.source_prompt, p) for r in requests for _, p in r.edits))
    phrases = rival_phrases(Counter(), (*preset.auto_rivals, *rivals), limit) if limit else ()
    return {(k, edit_id): Question(r.source_prompt, prompt, tuple(rival_prompts(r.source_prompt, prompt, phrases, limit)))
            for k, r in enumerate(requests) for edit_id, prompt in r.edits}


def edit_items_auto(engine, requests: list[ItemRequest], preset: Preset, progress=None,
                    rivals: tuple[str, ...] | None = None) -> list[ItemResult | Exception]:
    """``engine.edit_items`` with the scale chosen per item and edit (see the module docstring).

    ``rivals``: the run's rival phrases (``rival_phrases`` over the whole manifest, as the job planner collects
    them); ``None`` takes them from ``requests`` themselves. The preset's ``auto_rivals`` come first either way and
    ``auto_max_rivals`` bounds them (0: the edit prompt is weighed against the source prompt only).

    Results are ``ItemResult`` objects as a fixed preset gives, whose ``edit_scores`` also carry
    ``adapter_scale``, ``auto_landed``, ``auto_kept_db``, ``auto_reason``, ``auto_judge``, ``auto_rivals`` (how many
    rival prompts) and ``auto_candidates`` (JSON: every tried scale with its scores and ``seen``); a flagged choice
    adds a warning."""
    n = len(requests)
    results: list[ItemResult | Exception | None] = [None] * n
    pending: dict[int, list[tuple[str, str]]] = {k: list(r.edits) for k, r in enumerate(requests)}
    tried: dict[tuple[int, str], list[Candidate]] = {}
    made: dict[tuple[int, str], dict[float, tuple]] = {}
    photo_margin: dict[tuple[int, str], float] = {}
    first: dict[int, ItemResult] = {}
    timings: dict[int, Timings] = {}
    judge_name = ""
    questions = questions_for(requests, preset, rivals)
    for s in preset.auto_scales:
        open_items = [k for k in range(n) if results[k] is None and (pending[k] or k not in first)]
        if not open_items:
            break
        # Later tries reuse the first try's reconstruction: only the open edits are denoised again.
        outs = engine.edit_items([dataclasses.replace(requests[k], edits=pending[k],
                                                      reconstruction=first[k].reconstruction if k in first else None)
                                  for k in open_items], preset.at_candidate(s), progress)
        t0 = time.perf_counter()
        judged: list[tuple[int, str, str]] = []
        for k, out in zip(open_items, outs):
            if isinstance(out, BaseException):
                results[k] = out
                continue
            first.setdefault(k, out)
            spent = timings.setdefault(k, Timings(batch_items=out.timings.batch_items))
            spent.add(out.timings)
            judged += [(k, edit_id, prompt) for edit_id, prompt in pending[k]]
            for edit_id, _ in pending[k]:
                made.setdefault((k, edit_id), {})[s] = (out.edits[edit_id], out.edit_scores[edit_id],
                                                        out.full_edits.get(edit_id), out.region_masks.get(edit_id))
        if judged:
            # the photo's margin once per edit (first try), then the edited images'; one judge call
            new = [j for j in judged if (j[0], j[1]) not in photo_margin]
            images = [first[k].input for k, _, _ in new] + [made[(k, e)][s][0] for k, e, _ in judged]
            found, judge_name = margins(engine, images, [questions[(k, e)] for k, e, _ in new + judged])
            for (k, edit_id, _), (_, source_margin, _) in zip(new, found[: len(new)]):
                photo_margin[(k, edit_id)] = source_margin
            for (k, edit_id, _), (margin, _, seen) in zip(judged, found[len(new) :]):
                image = made[(k, edit_id)][s][0]
                landed = landed_score(margin, photo_margin[(k, edit_id)])
                tried.setdefault((k, edit_id), []).append(
                    Candidate(s, landed, kept_psnr(image, first[k].input), seen))
                if choose(tried[(k, edit_id)], preset.auto_min_landed, preset.auto_min_kept_db) is not None:
                    pending[k] = [(e, p) for e, p in pending[k] if e != edit_id]
        owners = {k for k, _, _ in judged}
        for k in owners:
            timings[k].judge_s += (time.perf_counter() - t0) / len(owners)
    for k, req in enumerate(requests):
        if results[k] is not None:
            continue
        base = first[k]
        edits, edit_scores, warnings, full_edits, masks = {}, {}, list(base.warnings), {}, {}
        for edit_id, _ in req.edits:
            cands = tried[(k, edit_id)]
            pick = final_choice(cands, preset.auto_min_landed, preset.auto_min_kept_db)
            image, scores, full, mask = made[(k, edit_id)][pick.scale]
            c = next(c for c in cands if c.scale == pick.scale)
            edits[edit_id] = image
            if full is not None:
                full_edits[edit_id], masks[edit_id] = full, mask
            edit_scores[edit_id] = {
                **scores, "adapter_scale": pick.scale, "auto_landed": c.landed, "auto_kept_db": c.kept_db,
                "auto_reason": pick.reason, "auto_judge": judge_name,
                "auto_rivals": len(questions[(k, edit_id)].rivals),
                "auto_candidates": json.dumps([c.to_dict() for c in cands]),
            }
            if pick.flagged:
                what = ("no candidate scale landed it" if pick.reason == "none-landed"
                        else "it landed only where it did not stay faithful")
                warnings.append(f"auto strength, edit {edit_id!r}: {what}; kept scale {pick.scale:g} "
                                f"(tried {', '.join(f'{c.scale:g}' for c in cands)})")
        t = timings[k]
        t.auto_tries = max((len(tried[(k, e)]) for e, _ in req.edits), default=1)
        results[k] = ItemResult(base.input, base.vae_roundtrip, base.reconstruction, edits, base.scores,
                                edit_scores, t, warnings, base.photo, base.full_reconstruction, full_edits, masks)
    return results


def run_items(engine, requests: list[ItemRequest], preset: Preset, progress=None,
              rivals: tuple[str, ...] | None = None) -> list[ItemResult | Exception]:
    """What a worker calls: the automatic search for an ``auto`` preset (with the run's ``rivals``), the engine
    itself otherwise (and then every edit is recorded at the preset's fixed ``edit_scale``)."""
    if preset.auto:
        return edit_items_auto(engine, requests, preset, progress, rivals)
    results = engine.edit_items(requests, preset, progress)
    for result in results:
        if isinstance(result, ItemResult):
            for scores in result.edit_scores.values():
                scores.setdefault("adapter_scale", float(preset.edit_scale))
    return results
