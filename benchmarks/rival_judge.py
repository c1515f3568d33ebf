"""The landed check with rival answers: how its judge and threshold were chosen, on calibration shots only.

    .venv/bin/python benchmarks/rival_judge.py       # ~17 min on 2 CPU cores (1,023 s); prints tables and one JSON line

Colour edits of 64 shots per split at the six fixed adapter scales 0..1 (DDIM 10, CFG 7.5: the auto evaluation's
base) on the shipped demo model, labelled by the evaluation's colour classifier. Splits: ``calib`` (shot seed
20000: never trained on, not the evaluation's) is where the settings are chosen; ``heldout`` (seed 10000, the
evaluation's shots) is printed beside it only to show how the choice carries over.

The diffusion judge (the text-only model's denoising error, ``engine.prompt_errors``) scores every photo and edit
under its edit prompt, its source prompt and the rivals — the run's other colours, as ``method/auto/rivals.py``
derives them from the 64 edits' prompts. For timesteps {500} (the default) and {300, 500, 700} (the earlier
default), one noise: the landed score (edit margin over the photo's margin, what ``method/auto/strength.py``
computes) and, for comparison, the earlier source-vs-edit score (no rivals). For each: AUC, agreement with the
classifier at thresholds 0..0.3, and what the strongest-first rule over scales 1, 0.4, 0 then lands (success,
tries per item).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab package, beside the product

import json
import os
import time

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))

from lab.demo_model.auto_eval import AutoEvalConfig, _shots, ranking_auc  # noqa: E402
from lab.demo_model.evaluate import score_edit, target_colour  # noqa: E402
from tight_pipeline.method.auto import strength  # noqa: E402
from tight_pipeline.method.factory import load_engine  # noqa: E402
from tight_pipeline.method.auto.rivals import rival_phrases, rival_prompts, run_vocabulary  # noqa: E402
from tight_pipeline.method.items import ItemRequest  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402
from tight_pipeline.method.presets import Preset  # noqa: E402

SCALES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
RULE = (1.0, 0.4, 0.0)
THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3)
JUDGES = {"t500": ((500,), (0,)), "t300+500+700": ((300, 500, 700), (0,))}


def split(engine, seed_offset: int, name: str) -> dict:
    shots = _shots(AutoEvalConfig(seed=seed_offset, heldout=False))
    targets = [target_colour(s.spec.colour) for s in shots]
    requests = [ItemRequest(s.image, s.caption, [("colour", s.caption.replace(s.spec.colour, t, 1))])
                for s, t in zip(shots, targets)]
    rivals = rival_phrases(run_vocabulary((r.source_prompt, r.edits[0][1]) for r in requests))
    prompts = [[r.edits[0][1], r.source_prompt, *rival_prompts(r.source_prompt, r.edits[0][1], rivals)] for r in requests]
    base = Preset(name="ddim-10", method="ddim", steps=10, guidance=7.5)
    images, success, kept = {"photo": [s.image for s in shots]}, {}, {}
    for scale in SCALES:
        with torch.no_grad():
            results = engine.edit_items(requests, base.at_candidate(scale))
        images[scale] = [r.edits["colour"] for r in results]
        success[scale] = np.array([score_edit(e, s, t)["edit_success"] > 0.5 for e, s, t in zip(images[scale], shots, targets)])
        kept[scale] = np.array([strength.kept_psnr(e, s.image) for e, s in zip(images[scale], shots)])
        print(f"{name}: edits at scale {scale:g}: success {success[scale].mean():.3f}", flush=True)
    fits = {}
    for judge, (timesteps, seeds) in JUDGES.items():
        for key, ims in images.items():
            flat_i = [im for im, p in zip(ims, prompts) for _ in p]
            flat_p = [q for p in prompts for q in p]
            with torch.no_grad():
                err = engine.prompt_errors(flat_i, flat_p, timesteps, seeds)
            fits[(judge, key)] = -np.log(np.array(err).reshape(len(shots), -1))
    return {"success": success, "kept": kept, "fits": fits, "rivals": rivals}


def landed(fits: np.ndarray, photo: np.ndarray, rivals: bool) -> np.ndarray:
    cols = slice(None) if rivals else slice(0, 2)
    f, p = fits[:, cols], photo[:, cols]
    edit_margin = f[:, 0] - np.max(f[:, 1:], axis=1)
    photo_margin = p[:, 1] - np.max(np.delete(p, 1, axis=1), axis=1)
    return edit_margin / np.maximum(photo_margin, 1e-3)


def rule(scores: dict, success: dict, kept: dict, threshold: float) -> tuple[float, float]:
    won, tries = [], []
    for i in range(len(success[0.0])):
        cands = []
        for s in RULE:
            cands.append(strength.Candidate(s, float(scores[s][i]), float(kept[s][i])))
            if strength.choose(cands, threshold, 26.0):
                break
        won.append(success[strength.final_choice(cands, threshold, 26.0).scale][i])
        tries.append(len(cands))
    return float(np.mean(won)), float(np.mean(tries))


def main() -> None:
    t0 = time.perf_counter()
    engine = load_engine(resolve_model_spec("catalog-demo"))
    data = {"calib": split(engine, 20000, "calib"), "heldout": split(engine, 10000, "heldout")}
    out = {}
    for judge in JUDGES:
        for rivals in (True, False):
            label = f"{judge:16s} {'rivals' if rivals else 'source only':11s}"
            line = []
            for name, d in data.items():
                scores = {s: landed(d["fits"][(judge, s)], d["fits"][(judge, "photo")], rivals) for s in SCALES}
                allscores = np.concatenate([scores[s] for s in SCALES])
                truth = np.concatenate([d["success"][s] for s in SCALES])
                row = {"auc": round(ranking_auc(allscores, truth), 3)}
                for th in THRESHOLDS:
                    won, tries = rule(scores, d["success"], d["kept"], th)
                    row[f"{th:g}"] = {"agreement": round(float(((allscores >= th) == truth).mean()), 3),
                                      "success": round(won, 3), "tries": round(tries, 2)}
                out[f"{label.strip()} {name}"] = row
                line.append(f"{name} AUC {row['auc']:.3f} " + " ".join(
                    f"[{th:g}: ag {row[f'{th:g}']['agreement']:.3f} ok {row[f'{th:g}']['success']:.3f} "
                    f"tr {row[f'{th:g}']['tries']:.2f}]" for th in THRESHOLDS))
            print(label, " | ".join(line), flush=True)
    for name, d in data.items():
        print(f"{name}: fixed-scale success", {f"{s:g}": round(float(d['success'][s].mean()), 3) for s in SCALES},
              "rivals", d["rivals"])
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1), "table": out}))


if __name__ == "__main__":
    main()
