"""What the shipped defaults do to a photo's detail: studio shots and photos that are not studio shots.

    .venv/bin/python benchmarks/detail_default.py [--shots 12] [--preset catalog-cfgpp]

Run exactly as a user would with no region flag: the demo model, the demo's default preset, each item's edits with
no region of their own (the preset's ``region``: ``studio`` as shipped). For comparison the same edits are also
composited as ``whole`` (the shipped default before) from the same model output.

- **Studio shots**: held-out demo shots at 256 px with the printed near-white emblem, two edits each (a colour
  edit of the product and a backdrop swap). Colour edits, inside the product (the generator's mask, away from the
  feather band): the *fine detail* (PSNR of the high-pass, the photo minus a Gaussian blur of sigma 2 px, per
  channel, of the output vs the photo's), the *sharpest marks* (the same over the top 3 % of the photo's high-pass
  magnitude), both also away from the seams where the body's colour meets a mark's (within 2 sigma of that border
  the high-pass holds the body/mark contrast, which a recolour that keeps the mark's colour must change), the
  near-white emblem's mean RGB change (0-255), the backdrop's PSNR and whether the edit landed (the demo colour
  classifier names the new colour on the product), and the product's PSNR against the generator's own render of the
  shot in the new colour (what a true recolour would be: the model's colour is near, not equal to, the palette's).
  Backdrop swaps: the product's PSNR vs the photo and the
  backdrop's change.
- **Other photos** (scikit-image's, no plain backdrop): whether the default output is byte for byte the ``whole``
  output.

Prints one JSON line per edit and Markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from region_eval import high_pass  # noqa: E402  (this folder: the photo minus a Gaussian blur, sigma 2 px)
from tight_pipeline.demo_model.products import (BACKGROUNDS, HELDOUT_SEED_OFFSET, ProductSpec,  # noqa: E402
                                                caption, dominant_colour, render_product)
from tight_pipeline.method import region  # noqa: E402
from tight_pipeline.method.factory import load_engine  # noqa: E402
from tight_pipeline.method.items import ItemRequest  # noqa: E402
from tight_pipeline.method.presets import load_preset  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402

SIZE = 256
SEED = 23  # another held-out stream than recolour_eval's
SIGMA = 2.0  # region_eval.high_pass's blur
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field")


def detail_scores(photo: np.ndarray, out: np.ndarray, product: np.ndarray) -> dict:
    inner = ndimage.binary_erosion(product, iterations=region.band_px(*photo.shape[:2][::-1]))
    hp_photo, hp_out = high_pass(photo), high_pass(out)
    magnitude = np.abs(hp_photo).sum(-1)
    sharp = inner & (magnitude >= np.quantile(magnitude[inner], 0.97))
    body = np.zeros(photo.shape[:2], bool)
    body[inner] = region.body_weights(photo[inner][:, :3].astype(np.float64))[0] > 0.5
    reach = int(np.ceil(2 * SIGMA))
    seam = ndimage.binary_dilation(body, iterations=reach) & ndimage.binary_dilation(inner & ~body, iterations=reach)
    off = inner & ~seam
    sharp_off = off & (magnitude >= np.quantile(magnitude[off], 0.97))
    emblem = inner & (photo[..., :3].min(-1) > 225)
    return {
        "fine_db": region.psnr(hp_out, hp_photo, inner),
        "marks_db": region.psnr(hp_out, hp_photo, sharp),
        "fine_off_seam_db": region.psnr(hp_out, hp_photo, off),
        "marks_off_seam_db": region.psnr(hp_out, hp_photo, sharp_off),
        "emblem_change": float(np.abs(out[emblem][:, :3].astype(float) - photo[emblem][:, :3]).mean())
        if emblem.any() else None,
        "backdrop_db": region.psnr(out, photo, ~product),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=12)
    parser.add_argument("--preset", default="catalog-cfgpp")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = load_engine(resolve_model_spec("catalog-demo"))
    preset = load_preset(args.preset)
    print(f"preset {preset.name}: region {preset.region!r}, fill {preset.region_fill!r}", flush=True)
    rows = []
    backgrounds = list(BACKGROUNDS)
    for i in range(args.shots):
        spec = dataclasses.replace(ProductSpec.sample(SEED + HELDOUT_SEED_OFFSET, 4000 + i), logo=True)
        shot = render_product(spec, size=SIZE)
        colour = next(c for c in ("blue", "red", "green", "yellow", "purple") if c != spec.colour)
        backdrop = backgrounds[(backgrounds.index(spec.background) + 1) % len(backgrounds)]
        edits = [("colour", caption(spec.kind, colour, spec.pattern, spec.background)),
                 ("backdrop", caption(spec.kind, spec.colour, spec.pattern, backdrop))]
        truth = np.asarray(render_product(dataclasses.replace(spec, colour=colour), size=SIZE).image)
        result = engine.edit_items([ItemRequest(shot.image, shot.caption, edits)], preset)[0]
        if isinstance(result, BaseException):
            raise result
        photo = np.asarray(shot.image)
        recon = np.asarray(result.reconstruction.convert("RGB"))
        for edit_id, _ in edits:
            small = np.asarray(result.edits[edit_id].convert("RGB"))
            whole = region.finish(photo, small, recon, region.EditRegion("whole"))[0]
            fields = result.edit_scores[edit_id]
            for name, out in (("default", result.full_edits[edit_id]), ("whole", whole)):
                row = {"shot": i, "caption": spec.caption, "edit": edit_id, "output": name,
                       "region_source": fields["region_source"] if name == "default" else "whole",
                       "fill": fields["region_fill"] if name == "default" else "edit"}
                if edit_id == "colour":
                    row |= detail_scores(photo, out, shot.mask)
                    # the generator's own render of this shot in the new colour: what a true recolour looks like
                    row["vs_true_recolour_db"] = region.psnr(out, truth, shot.mask)
                    row["landed"] = dominant_colour(Image.fromarray(out[..., :3]), shot.mask) == colour
                else:
                    row["product_db"] = region.psnr(out, photo, shot.mask)
                    row["backdrop_change"] = float(np.abs(out[~shot.mask][:, :3].astype(float)
                                                          - photo[~shot.mask][:, :3]).mean())
                rows.append(row)
                print(json.dumps(row), flush=True)

    from skimage import data

    other = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image = image.resize((SIZE, round(SIZE * image.height / image.width)), Image.Resampling.LANCZOS)
        result = engine.edit_items([ItemRequest(image, "a photo", [("e", "a red photo")])], preset)[0]
        if isinstance(result, BaseException):
            raise result
        photo = np.asarray(image)
        whole = region.finish(photo, np.asarray(result.edits["e"].convert("RGB")),
                              np.asarray(result.reconstruction.convert("RGB")), region.EditRegion("whole"))[0]
        row = {"photo": name, "studio_shot": region.studio_product(photo) is not None,
               "region_source": result.edit_scores["e"]["region_source"],
               "same_as_whole": bool(np.array_equal(result.full_edits["e"], whole))}
        other.append(row)
        print(json.dumps(row), flush=True)

    def stat(sel, key, worst=min):
        values = [r[key] for r in sel if r.get(key) is not None]
        return f"{np.mean(values):.1f} (worst {worst(values):.1f})" if values else "-"

    print("\nColour edits of the product (studio shots):\n")
    print("| output | fine detail (dB) | sharpest marks (dB) | fine detail off the seams (dB) | sharpest marks off the "
          "seams (dB) | near-white emblem change (0-255) | backdrop (dB) | product vs the true recolour (dB) | landed | "
          "fills |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("whole", "default"):
        sel = [r for r in rows if r["edit"] == "colour" and r["output"] == name]
        fills = ", ".join(f"{f} {sum(r['fill'] == f for r in sel)}" for f in sorted({r["fill"] for r in sel}))
        print(f"| {name} | {stat(sel, 'fine_db')} | {stat(sel, 'marks_db')} | {stat(sel, 'fine_off_seam_db')} | "
              f"{stat(sel, 'marks_off_seam_db')} | {stat(sel, 'emblem_change', max)} | {stat(sel, 'backdrop_db')} | "
              f"{stat(sel, 'vs_true_recolour_db')} | {sum(r['landed'] for r in sel)}/{len(sel)} | {fills} |")
    print("\nBackdrop swaps (studio shots):\n\n| output | product kept (dB) | backdrop change (0-255) | regions |\n"
          "| --- | --- | --- | --- |")
    for name in ("whole", "default"):
        sel = [r for r in rows if r["edit"] == "backdrop" and r["output"] == name]
        sources = ", ".join(f"{s} {sum(r['region_source'] == s for r in sel)}" for s in sorted({r["region_source"]
                                                                                              for r in sel}))
        print(f"| {name} | {stat(sel, 'product_db')} | {stat(sel, 'backdrop_change')} | {sources} |")
    print(f"\nOther photos: {sum(r['same_as_whole'] for r in other)}/{len(other)} default outputs are the `whole` "
          f"output byte for byte ({sum(r['studio_shot'] for r in other)} taken for studio shots)")


if __name__ == "__main__":
    main()
