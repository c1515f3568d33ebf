"""Does a recolour keep the product's own marks? The three fills of a region on the same colour edits.

    .venv/bin/python benchmarks/recolour_eval.py [--shots 12] [--preset catalog-cfgpp]

Held-out demo shots rendered at 256 px with the printed near-white emblem (``logo``), one colour edit each, run
through the demo model once per shot with the automatic region (``region: auto``); the edit is then composited
with each fill — ``edit``, ``detail`` and ``recolour`` (``method/region.py``) — on the same region. Per fill, at
the photo's size, inside the product (the generator's mask, away from the feather band):

- fine detail: PSNR of the high-pass (the photo minus a Gaussian blur, sigma 2 px) of the output vs the photo's;
- sharpest marks: the same over the top 3 % of the photo's high-pass magnitude;
- the emblem's mean RGB change (0-255) vs the photo (its near-white pixels);
- the backdrop's PSNR vs the photo (outside the product) and whether the edit landed (the demo colour classifier
  names the new colour on the product).
Prints one JSON line per shot and a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from detail_default import detail_scores  # noqa: E402  (this folder: the same measures)
from tight_pipeline.demo_model.products import (HELDOUT_SEED_OFFSET, ProductSpec, dominant_colour,  # noqa: E402
                                                render_product)
from tight_pipeline.method import region  # noqa: E402
from tight_pipeline.method.factory import load_engine  # noqa: E402
from tight_pipeline.method.items import ItemRequest  # noqa: E402
from tight_pipeline.method.presets import load_preset  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402

SIZE = 256
SEED = 11
FILLS = ("edit", "detail", "recolour")


def measure(photo: np.ndarray, out: np.ndarray, product: np.ndarray, target: str) -> dict:
    keys = ("fine_db", "marks_db", "emblem_change", "backdrop_db")
    scores = detail_scores(photo, out, product)
    return {**{k: scores[k] for k in keys},
            "landed": dominant_colour(Image.fromarray(out[..., :3]), product) == target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=12)
    parser.add_argument("--preset", default="catalog-cfgpp")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = load_engine(resolve_model_spec("catalog-demo"))
    preset = load_preset(args.preset)
    rows = []
    for i in range(args.shots):
        spec = dataclasses.replace(ProductSpec.sample(SEED + HELDOUT_SEED_OFFSET, 3000 + i), logo=True)
        shot = render_product(spec, size=SIZE)
        colour = next(c for c in ("blue", "red", "green", "yellow", "purple") if c != spec.colour)
        prompt = dataclasses.replace(spec, colour=colour).caption
        result = engine.edit_items([ItemRequest(shot.image, shot.caption, [("colour", prompt)],
                                                regions={"colour": region.EditRegion("auto")})], preset)[0]
        if isinstance(result, BaseException):
            raise result
        photo = np.asarray(shot.image)
        mask = result.region_masks["colour"]
        for fill in FILLS:
            out, used = region.composite_fill(photo, np.asarray(result.edits["colour"]),
                                              np.asarray(result.reconstruction), mask, fill)
            row = {"shot": i, "caption": spec.caption, "to": colour, "fill": fill, "used": used,
                   **measure(photo, out, shot.mask, colour)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| fill | fine detail (dB) | sharpest marks (dB) | near-white emblem change (0-255) | backdrop (dB) | "
          "landed |\n| --- | --- | --- | --- | --- | --- |")
    for fill in FILLS:
        sel = [r for r in rows if r["fill"] == fill]

        def mean(key):
            values = [r[key] for r in sel if r[key] is not None]
            return f"{np.mean(values):.1f} (worst {min(values) if key != 'emblem_change' else max(values):.1f})"

        print(f"| {fill} | {mean('fine_db')} | {mean('marks_db')} | {mean('emblem_change')} | {mean('backdrop_db')} | "
              f"{sum(r['landed'] for r in sel)}/{len(sel)} |")


if __name__ == "__main__":
    main()
