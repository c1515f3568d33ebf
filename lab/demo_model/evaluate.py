"""Measure what the image condition buys on the catalog demo model: reconstruction vs editability by scale.

    python -m lab evaluate-demo-model --report docs/demo-model

On held-out synthetic shots (never trained on), for every inversion schedule (``ddim`` and ``renoise`` at
10/20/50 steps) and adapter scale (0 ... 1), the Tight Inversion recipe is run exactly as the engine runs it
(same ``invert_*`` and ``denoise`` loops, inversion + reconstruction at guidance 1, edits at CFG 7.5 with
the negative image embeds in the unconditional branch, one scale for both) on batches of images, and scored:

- reconstruction PSNR/SSIM against the input and against the VAE round-trip, and the latent error;
- colour edits ("a red mug ..." -> "a teal mug ..."): success when the product's dominant colour inside its
  mask is the target colour; shape preservation as the IoU between the input's product mask and the edit's
  product region (colour segmentation against the known product-free plate); background PSNR outside the
  (dilated) mask.

Writes ``evaluation.json``, ``evaluation.md``, ``tradeoff.png`` and ``examples.png`` to ``--report``, logs
them to MLflow's trade-off experiment (the one the ``tradeoff-benchmark`` flow uses) and derives the
``catalog-*`` presets for this model from the table.

This module runs the grid and aggregates it; the probes of what the adapter carries are in ``probes.py``, the
report files in ``report.py``, the preset calibration in ``calibration.py``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lab.demo_model.calibration import calibrate_presets
from lab.demo_model.probes import condition_probe, token_probe
from tight_pipeline.demo_model.products import (target_colour, HELDOUT_SEED_OFFSET, ProductSpec, dominant_colour, iou,
                                                 product_region, render_product)
from lab.demo_model.report import examples_sheet, markdown_report, plot_tradeoff



@dataclass(frozen=True)
class EvalConfig:
    images: int = 64
    seed: int = 0
    scales: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    runs: tuple[tuple[str, int], ...] = (("ddim", 10), ("ddim", 20), ("ddim", 50), ("renoise", 10), ("renoise", 20))
    guidance: float = 7.5
    renoise_iterations: int = 4
    batch: int = 64




def heldout_shots(config: EvalConfig):
    return [render_product(ProductSpec.sample(config.seed + HELDOUT_SEED_OFFSET, i)) for i in range(config.images)]


def _psnr_masked(a, b, keep: np.ndarray) -> float:
    x = np.asarray(a, np.float64)[keep]
    y = np.asarray(b, np.float64)[keep]
    mse = float(np.mean((x - y) ** 2)) if x.size else 0.0
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    return ~_dilate(~mask, r)


def score_edit(edit, shot, target: str) -> dict:
    """Colour-edit success, shape IoU and background PSNR of one edited shot."""
    return {
        "edit_success": float(dominant_colour(edit, _erode(shot.mask, 1)) == target),
        "edit_kept_source": float(dominant_colour(edit, _erode(shot.mask, 1)) == shot.spec.colour),
        "iou": iou(product_region(edit, shot.background), shot.mask),
        "background_psnr": _psnr_masked(edit, shot.image, ~_dilate(shot.mask, 2)),
    }


def evaluate_demo_model(model: str, report_dir: str | Path, config: EvalConfig = EvalConfig(), log=print,
                        progress: bool = True) -> dict:
    """Run the grid, write the report files, return the report dict (``table``: one row per run x scale)."""
    import torch
    from tqdm import tqdm

    from tight_pipeline.method import conditioning, editing, inversion, metrics
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine

    t_start = time.perf_counter()
    engine = load_engine(resolve_model_spec(model))
    pipe = engine.pipe
    shots = heldout_shots(config)
    targets = [target_colour(s.spec.colour) for s in shots]
    sources = [s.caption for s in shots]
    edits = [s.caption.replace(s.spec.colour, t, 1) for s, t in zip(shots, targets)]
    size = shots[0].image.height
    with torch.no_grad():
        z0 = torch.cat([engine.encode(s.image) for s in shots])
        roundtrip = engine.decode(z0)
        text_src = conditioning.embed_text(pipe, sources, size, size)
        text_edit = conditioning.embed_text(pipe, edits, size, size)
        text_neg = conditioning.embed_text(pipe, [""], size, size, zero_empty=False)  # as the committed grid was measured
        embeds = [conditioning.embed_image(pipe, s.image) for s in shots]
    pos = torch.cat([e.positive for e in embeds])
    neg = torch.cat([e.negative for e in embeds])
    vae_psnr = [metrics.psnr(r, s.image) for r, s in zip(roundtrip, shots)]
    probe = condition_probe(pipe, z0, text_src, pos)
    tokens = token_probe(pipe, config.seed) if conditioning.has_adapter(pipe) else []

    per_image: list[dict] = []
    examples: dict[tuple, list] = {}
    total = len(config.runs) * len(config.scales) * math.ceil(len(shots) / config.batch)
    bar = tqdm(total=total, desc="evaluate", disable=not progress)
    for method, steps in config.runs:
        schedule = inversion.make_schedule(pipe.scheduler, steps)
        for scale in config.scales:
            conditioning.set_adapter_scale(pipe, scale)
            for lo in range(0, len(shots), config.batch):
                idx = list(range(lo, min(lo + config.batch, len(shots))))
                b = len(idx)
                src = text_src.rows(idx)
                if method == "ddim":
                    z_T = inversion.invert_ddim(pipe, z0[idx], schedule, src, pos[idx])
                else:
                    z_T = inversion.invert_renoise(pipe, z0[idx], schedule, src, pos[idx],
                                                   iterations=config.renoise_iterations, average_last=1)
                text = conditioning.TextCondition(
                    torch.cat([src.embeds, text_neg.embeds.repeat(b, 1, 1), text_edit.rows(idx).embeds]),
                    torch.cat([src.pooled, text_neg.pooled.repeat(b, 1), text_edit.rows(idx).pooled]),
                    torch.cat([src.time_ids, text_neg.time_ids.repeat(b, 1), text_edit.rows(idx).time_ids]),
                )
                z = editing.denoise(pipe, torch.cat([z_T, z_T]), schedule, text,
                                    torch.cat([pos[idx], neg[idx], pos[idx]]), b, b, config.guidance)
                images = engine.decode(z)
                for j, i in enumerate(idx):
                    rec, edit = images[j], images[b + j]
                    row = {"method": method, "steps": steps, "scale": scale, "image": i,
                           "psnr_vs_input": metrics.psnr(rec, shots[i].image),
                           "ssim_vs_input": metrics.ssim(rec, shots[i].image),
                           "psnr_vs_vae": metrics.psnr(rec, roundtrip[i]),
                           "ssim_vs_vae": metrics.ssim(rec, roundtrip[i]),
                           "latent_mse": float((z[j] - z0[i]).pow(2).mean()),
                           "vae_psnr_vs_input": vae_psnr[i],
                           **score_edit(edit, shots[i], targets[i])}
                    per_image.append(row)
                    if i < 6:
                        examples.setdefault((method, steps, scale), []).append((rec, edit))
                bar.update(1)
    bar.close()

    table = aggregate(per_image, config)
    report = {
        "model": str(model), "config": asdict(config), "heldout_seed": config.seed + HELDOUT_SEED_OFFSET,
        "vae_psnr_vs_input": float(np.mean(vae_psnr)),
        "condition_probe": probe,
        "token_probe": tokens,
        "segmentation_iou_of_inputs": float(np.mean([iou(product_region(s.image, s.background), s.mask) for s in shots])),
        "table": table, "wall_s": round(time.perf_counter() - t_start, 1),
    }
    report["presets"] = calibrate_presets(table)
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=1))
    (out / "evaluation.md").write_text(markdown_report(report))
    (out / "tradeoff.png").write_bytes(plot_tradeoff(table))
    examples_sheet(shots, examples, config).save(out / "examples.png")
    log(f"evaluation written to {out} ({report['wall_s']} s)")
    return report


def aggregate(per_image: list[dict], config: EvalConfig) -> list[dict]:
    """Means per (method, steps, scale), plus the paired reconstruction gain over scale 0 of the same run."""
    import pandas as pd

    df = pd.DataFrame(per_image)
    rows = []
    for (method, steps), run in df.groupby(["method", "steps"], sort=False):
        base0 = run[run["scale"] == 0.0].set_index("image")
        base, base_vae = base0["psnr_vs_input"], base0["psnr_vs_vae"]
        # the most any condition can add against the input: the VAE round-trip's PSNR minus scale 0's
        headroom = float(base0["vae_psnr_vs_input"].mean() - base.mean()) if len(base0) else float("nan")
        for scale, g in run.groupby("scale"):
            g = g.set_index("image")
            gain = g["psnr_vs_input"] - base.reindex(g.index)
            gain_vae = g["psnr_vs_vae"] - base_vae.reindex(g.index)
            rows.append({
                "method": method, "steps": int(steps), "scale": float(scale), "images": int(len(g)),
                **{k: round(float(g[k].mean()), 4) for k in
                   ("psnr_vs_input", "ssim_vs_input", "psnr_vs_vae", "ssim_vs_vae", "latent_mse", "edit_success",
                    "edit_kept_source", "iou", "background_psnr")},
                "gain_vs_scale0_db": round(float(gain.mean()), 3),
                "better_than_scale0": round(float((gain > 0).mean()), 3),
                "gain_vs_vae_db": round(float(gain_vae.mean()), 3),
                "headroom_db": round(headroom, 3),
            })
    return rows


