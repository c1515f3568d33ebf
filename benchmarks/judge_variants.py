"""How far can the diffusion judge of automatic strength agree with the colour classifier? 48 judge variants.

    .venv/bin/python benchmarks/judge_variants.py            # ~12 min on 2 CPU cores; prints a table and one JSON

Colour edits of 64 shots per split at adapter scales 1, 0.4 and 0 (DDIM 10, CFG 7.5 — the auto evaluation's base)
on the shipped demo model, labelled by the evaluation's colour classifier, and the text-only model's per-pixel
denoising errors of every photo and edit under the source and the edit prompt at 9 timesteps x 3 noises. Splits:
``calib`` (shot seed 20000: never trained on, not the evaluation's) chooses each variant's threshold; ``heldout``
(seed 10000, the evaluation's shots) is only scored. Training shots are not used: the model has seen them, and
thresholds chosen there did not carry over (session 9).

Variants: timesteps x noises x weighting (``none``: every pixel; ``change``: pixels weighted by how much the edit
changed them) x form (``ratio``: the edit's contrast over the photo's, what ``method/auto/strength.py`` computes with
``auto_max_rivals: 0``; with rivals see ``benchmarks/rival_judge.py``;
``raw``: the edit's contrast alone). For each: AUC and best agreement on ``calib``, agreement on ``heldout`` at
that threshold, and what the strongest-first rule would then choose on ``heldout`` (success, tries).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab package, beside the product

import json
import os

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))

from lab.demo_model.auto_eval import AutoEvalConfig, _shots, ranking_auc as auc  # noqa: E402
from lab.demo_model.evaluate import score_edit, target_colour  # noqa: E402
from tight_pipeline.method import conditioning, inversion
from tight_pipeline.method.auto import strength  # noqa: E402
from tight_pipeline.method.factory import load_engine  # noqa: E402
from tight_pipeline.method.items import ItemRequest  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402
from tight_pipeline.method.presets import Preset  # noqa: E402

TIMESTEPS = (100, 200, 300, 400, 500, 600, 700, 800, 900)
SEEDS = (0, 1, 2)
SCALES = (1.0, 0.4, 0.0)  # strongest first, as auto tries them
SPLITS = {"calib": 10_000, "heldout": 0}  # AutoEvalConfig.seed; held-out offset 10 000 is added to both


@torch.no_grad()
def collect(engine, seed: int, images: int = 64) -> dict:
    """Edits at every scale, their labels, and error maps ``[image set, prompt, t, noise, item, h, w]``."""
    pipe = engine.pipe
    shots = _shots(AutoEvalConfig(images=images, seed=seed, heldout=True))
    targets = [target_colour(s.spec.colour) for s in shots]
    requests = [ItemRequest(s.image, s.caption, [("colour", s.caption.replace(s.spec.colour, t, 1))])
                for s, t in zip(shots, targets)]
    base = Preset(name="ddim-10", method="ddim", steps=10, guidance=7.5)
    sets, labels = [[s.image for s in shots]], []
    for scale in SCALES:
        edits = [r.edits["colour"] for r in engine.edit_items(requests, base.at_candidate(scale))]
        sets.append(edits)
        labels.append([score_edit(e, s, t)["edit_success"] > 0.5 for e, s, t in zip(edits, shots, targets)])
    size = shots[0].image.height
    texts = [conditioning.embed_text(pipe, [r.source_prompt for r in requests], size, size),
             conditioning.embed_text(pipe, [r.edits[0][1] for r in requests], size, size)]
    embeds = conditioning.embed_image(pipe, shots[0].image)
    rows = None if embeds is None else embeds.negative.expand(images, *embeds.negative.shape[1:])
    conditioning.set_adapter_scale(pipe, 0.0)  # text only, as the judge
    maps = None
    for a, ims in enumerate(sets):
        z0 = engine.encode(engine.pixels(ims))
        if maps is None:
            maps = np.zeros((len(sets), 2, len(TIMESTEPS), len(SEEDS), images, *z0.shape[-2:]), np.float32)
        for si, seed_ in enumerate(SEEDS):
            noise = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(seed_)).to(z0)
            for ti, t in enumerate(TIMESTEPS):
                alpha = float(pipe.scheduler.alphas_cumprod[t])
                xt = alpha**0.5 * z0 + (1 - alpha) ** 0.5 * noise
                for p in range(2):
                    pred = conditioning.predict_noise(pipe, xt, torch.tensor(t), texts[p], rows)
                    _, eps = inversion.split_prediction(pred, xt, alpha, pipe.scheduler.config.prediction_type)
                    maps[a, p, ti, si] = (eps - noise).pow(2).mean(1).cpu().numpy()
    pix = np.stack([np.stack([np.asarray(im.convert("RGB"), np.float64) for im in ims]) for ims in sets])
    kept = np.stack([[strength.kept_psnr(e, p) for e, p in zip(sets[a], sets[0])] for a in (1, 2, 3)])
    return {"maps": maps.astype(np.float64), "labels": np.array(labels), "pix": pix, "kept": kept}


def scores(data: dict, timesteps, seeds, weight: str, form: str) -> np.ndarray:
    """Landed scores ``[scale, item]`` of one judge variant."""
    m = data["maps"][:, :, [TIMESTEPS.index(t) for t in timesteps]][:, :, :, [SEEDS.index(s) for s in seeds]].mean((2, 3))
    k = m.shape[-1]
    out = []
    for a in (1, 2, 3):
        if weight == "change":
            change = np.abs(data["pix"][a] - data["pix"][0]).mean(-1)
            n, h, w = change.shape
            W = change.reshape(n, k, h // k, k, w // k).mean((2, 4)) + 1e-6
        else:
            W = np.ones(m.shape[2:])

        def mean(x):
            return (W * x).sum((1, 2)) / W.sum((1, 2))

        edit = np.log(mean(m[a, 0]) / mean(m[a, 1]))
        photo = np.log(mean(m[0, 0]) / mean(m[0, 1]))
        out.append(edit / np.maximum(-photo, 1e-3) if form == "ratio" else edit)
    return np.stack(out)


def best_threshold(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    candidates = np.unique(score)
    agreement = [float(((score >= t) == y).mean()) for t in candidates]
    i = int(np.argmax(agreement))
    return float(candidates[i]), agreement[i]


def rule(data: dict, score: np.ndarray, threshold: float, min_kept_db: float = 26.0) -> tuple[float, float]:
    """The strongest-first rule on precomputed edits: success of the kept edits and tries per item."""
    success, tries = [], []
    for i in range(score.shape[1]):
        good = [j for j in range(3) if score[j, i] >= threshold and data["kept"][j, i] >= min_kept_db]
        landed = [j for j in range(3) if score[j, i] >= threshold]
        pick = good[0] if good else (landed[0] if landed else 2)
        success.append(data["labels"][pick, i])
        tries.append(good[0] + 1 if good else 3)
    return float(np.mean(success)), float(np.mean(tries))


def main() -> None:
    engine = load_engine(resolve_model_spec("catalog-demo"))
    data = {name: collect(engine, seed) for name, seed in SPLITS.items()}
    calib, held = data["calib"], data["heldout"]
    results = []
    for timesteps in [(200, 300, 400), (300, 500, 700), (100, 300, 500, 700, 900), TIMESTEPS]:
        for seeds in [(0,), SEEDS]:
            for weight in ("none", "change"):
                for form in ("ratio", "raw"):
                    sc, sh = scores(calib, timesteps, seeds, weight, form), scores(held, timesteps, seeds, weight, form)
                    threshold, agreement = best_threshold(sc.ravel(), calib["labels"].ravel())
                    success, tries = rule(held, sh, threshold)
                    results.append({
                        "timesteps": list(timesteps), "seeds": len(seeds), "weight": weight, "form": form,
                        "calib_auc": round(auc(sc.ravel(), calib["labels"].ravel()), 3),
                        "calib_agreement": round(agreement, 3), "threshold": round(threshold, 3),
                        "heldout_auc": round(auc(sh.ravel(), held["labels"].ravel()), 3),
                        "heldout_agreement": round(float(((sh.ravel() >= threshold) == held["labels"].ravel()).mean()), 3),
                        "rule_success": round(success, 3), "rule_tries": round(tries, 2)})
                    r = results[-1]
                    print(f"{str(timesteps):34s} x{len(seeds)} {weight:6s} {form:5s} calib AUC {r['calib_auc']:.3f} "
                          f"agree {r['calib_agreement']:.3f} @ {r['threshold']:+.3f} | held-out AUC {r['heldout_auc']:.3f} "
                          f"agree {r['heldout_agreement']:.3f} | rule: success {success:.3f}, {tries:.2f} tries", flush=True)
    fixed = {f"{s:g}": round(float(held["labels"][j].mean()), 3) for j, s in enumerate(SCALES)}
    print(json.dumps({"heldout_fixed_success": fixed,
                      "calib_fixed_success": {f"{s:g}": round(float(calib["labels"][j].mean()), 3) for j, s in enumerate(SCALES)},
                      "variants": results}))


if __name__ == "__main__":
    main()
