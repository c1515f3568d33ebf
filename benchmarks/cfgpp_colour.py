"""CFG++ against CFG on the shipped demo model's colour edits: does the new default land its edits?

    .venv/bin/python benchmarks/cfgpp_colour.py          # ~5 min on 2 CPU cores; writes docs/demo-model/cfgpp.{md,json}

The protocol of ``benchmarks/cfg_sharpening.py`` (64 held-out shots, seed 10000, one colour edit each, scored by the
evaluation's colour classifier: success, shape IoU, background PSNR) at the catalog presets' adapter scale 1.0:
DDIM 10 and ReNoise 10 with CFG 7.5, CFG 7.5 + sharpening 2 (``catalog-sharp``) and CFG++ at λ 0.6 / 0.8 / 1.0
(``catalog-cfgpp`` and ``catalog-balanced-cfgpp`` are λ 0.8).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab package, beside the product

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))

from benchmarks.cfg_sharpening import colour_edits  # noqa: E402  (the same shots and edits)
from lab.demo_model.evaluate import score_edit  # noqa: E402
from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET  # noqa: E402
from tight_pipeline.method.factory import load_engine  # noqa: E402
from tight_pipeline.method.presets import load_preset  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402

IMAGES = 64


def grid():
    sharp, cfgpp, balanced = load_preset("catalog-sharp"), load_preset("catalog-cfgpp"), load_preset("catalog-balanced")
    yield "DDIM 10, CFG 7.5", dataclasses.replace(sharp, cfg_sharpening=1.0)
    yield "DDIM 10, CFG 7.5 + sharpening 2 (catalog-sharp)", sharp
    for lam in (0.6, 0.8, 1.0):
        yield f"DDIM 10, CFG++ λ {lam:g}" + (" (catalog-cfgpp)" if lam == 0.8 else ""), dataclasses.replace(cfgpp, guidance=lam)
    yield "ReNoise 10, CFG 7.5 (catalog-balanced)", balanced
    yield "ReNoise 10, CFG++ λ 0.8 (catalog-balanced-cfgpp)", load_preset("catalog-balanced-cfgpp")


def main(out_dir: str = "docs/demo-model") -> list[dict]:
    t_start = time.perf_counter()
    engine = load_engine(resolve_model_spec("catalog-demo"))
    shots, targets, requests = colour_edits(IMAGES)
    rows = []
    for label, preset in grid():
        t0 = time.perf_counter()
        with torch.no_grad():
            results = engine.edit_items(requests, preset)
        scored = [score_edit(r.edits["colour"], s, t) for r, s, t in zip(results, shots, targets)]
        rows.append({"setting": label, **{k: round(float(np.mean([x[k] for x in scored])), 4)
                                          for k in ("edit_success", "iou", "background_psnr")},
                     "reconstruction_vs_vae": round(float(np.mean([r.scores["psnr_vs_vae"] for r in results])), 2),
                     "s_per_item": round((time.perf_counter() - t0) / IMAGES, 3)})
        print(json.dumps(rows[-1]), flush=True)
    wall = round(time.perf_counter() - t_start, 1)
    out = Path(out_dir)
    (out / "cfgpp.json").write_text(json.dumps({"images": IMAGES, "shot_seed": HELDOUT_SEED_OFFSET, "scale": 1.0,
                                                "wall_s": wall, "rows": rows}, indent=1))
    lines = [f"# CFG++ vs CFG on the catalog demo model's colour edits\n\n{IMAGES} held-out shots (seed "
             f"{HELDOUT_SEED_OFFSET}), one colour edit each, adapter scale 1.0; `benchmarks/cfgpp_colour.py`, {wall:.0f} s "
             "on 2 CPU cores.\n", "| setting | edit success | IoU | background PSNR | s / item |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['edit_success']:.3f} | {r['iou']:.3f} | {r['background_psnr']:.1f} dB | "
              f"{r['s_per_item']:.3f} |" for r in rows]
    (out / "cfgpp.md").write_text("\n".join(lines) + "\n")
    print(f"written to {out}/cfgpp.md ({wall} s)")
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:])
