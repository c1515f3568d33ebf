"""The Tight Inversion demo's CFG sharpening on the shipped demo model: colour edits by sharpening factor and scale.

    .venv/bin/python benchmarks/cfg_sharpening.py            # ~6 min on 2 CPU cores; writes docs/demo-model/sharpening.{md,json,png}

64 held-out shots (the evaluation's, seed 10000), one colour edit each (three steps round the palette), DDIM 10,
CFG 7.5 — the automatic-strength evaluation's base — through ``engine.edit_items`` with the preset field
``cfg_sharpening`` (``method/editing.py::guide``). Scored by the evaluation's colour classifier (success), shape
IoU and background PSNR (``demo_model/evaluate.py::score_edit``). The reconstruction runs at guidance 1 and is not
affected by the factor, so only edits are scored.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab package, beside the product

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))

from lab.demo_model.evaluate import score_edit, target_colour  # noqa: E402
from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET, ProductSpec, render_product  # noqa: E402
from tight_pipeline.method.factory import load_engine  # noqa: E402
from tight_pipeline.method.items import ItemRequest  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402
from tight_pipeline.method.presets import Preset  # noqa: E402

GRID = [(f, 0.4) for f in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)] + [(f, s) for f in (1.0, 2.0) for s in (0.0, 1.0)]
IMAGES = 64


def colour_edits(images: int = IMAGES):
    """The held-out shots (the evaluation's, seed 10000), their target colours and one colour-edit request each."""
    shots = [render_product(ProductSpec.sample(HELDOUT_SEED_OFFSET, i)) for i in range(images)]
    targets = [target_colour(s.spec.colour) for s in shots]
    requests = [ItemRequest(s.image, s.caption, [("colour", s.caption.replace(s.spec.colour, t, 1))])
                for s, t in zip(shots, targets)]
    return shots, targets, requests


def main(out_dir: str = "docs/demo-model") -> list[dict]:
    t_start = time.perf_counter()
    engine = load_engine(resolve_model_spec("catalog-demo"))
    shots, targets, requests = colour_edits()
    rows, sheet = [], [np.concatenate([np.asarray(s.image) for s in shots[:10]], 1)]
    for factor, scale in GRID:
        preset = Preset(name=f"ddim-10-sharpening-{factor:g}", method="ddim", steps=10, guidance=7.5,
                        cfg_sharpening=factor).at_candidate(scale)
        t0 = time.perf_counter()
        with torch.no_grad():
            results = engine.edit_items(requests, preset)
        scored = [score_edit(r.edits["colour"], s, t) for r, s, t in zip(results, shots, targets)]
        row = {"cfg_sharpening": factor, "scale": scale,
               **{k: round(float(np.mean([x[k] for x in scored])), 4) for k in ("edit_success", "iou", "background_psnr")},
               "s_per_item": round((time.perf_counter() - t0) / IMAGES, 3)}
        rows.append(row)
        if scale == 0.4 and factor in (1.0, 2.0):  # the picture: photos, plain CFG, sharpening 2 (first 10 shots)
            sheet.append(np.concatenate([np.asarray(r.edits["colour"]) for r in results[:10]], 1))
        print(json.dumps(row), flush=True)
    wall = round(time.perf_counter() - t_start, 1)
    out = Path(out_dir)
    (out / "sharpening.json").write_text(json.dumps({"images": IMAGES, "shot_seed": HELDOUT_SEED_OFFSET,
                                                     "base": "DDIM 10, CFG 7.5", "wall_s": wall, "rows": rows}, indent=1))
    lines = [f"# CFG sharpening on the catalog demo model\n\n{IMAGES} held-out shots (seed {HELDOUT_SEED_OFFSET}), colour "
             f"edits, DDIM 10, CFG 7.5; `benchmarks/cfg_sharpening.py`, {wall:.0f} s on 2 CPU cores. 1.0 = plain CFG.\n",
             "| cfg_sharpening | adapter scale | edit success | IoU | background PSNR | s / item |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cfg_sharpening']:g} | {r['scale']:g} | {r['edit_success']:.3f} | {r['iou']:.3f} | "
              f"{r['background_psnr']:.1f} dB | {r['s_per_item']:.3f} |" for r in rows]
    lines.append("\n![photos, plain CFG, sharpening 2](sharpening.png)\n\nRows: the photos; edits at scale 0.4 with plain "
                 "CFG; the same with `cfg_sharpening: 2`.")
    (out / "sharpening.md").write_text("\n".join(lines) + "\n")
    from PIL import Image

    Image.fromarray(np.concatenate(sheet, 0)).resize((640 * 2, 192 * 2), Image.Resampling.NEAREST).save(out / "sharpening.png")
    print(f"written to {out}/sharpening.md ({wall} s)")
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:])
