"""Region-true edits on the demo model: whole vs automatic vs given regions, side by side on the same shots.

    python benchmarks/region_eval.py [--shots 12] [--preset catalog-balanced] [--out docs/region]

Held-out demo shots rendered at 256 px (the model works at 64 px; the generator renders any size and gives the
product's true mask), three edits each — a colour, a pattern and a background — through the engine in one run per
region source. Writes ``<out>/results.json``, ``<out>/table.md`` and ``<out>/comparison.png`` (input at full size |
today's output | region-true output) and prints the table.

Measured per edit, at the photo's own size: edit success (colour: the demo colour classifier names the new colour
on the product; background: the background's mean colour is nearer the new backdrop than the old), shape IoU of
the product (colour and pattern edits), PSNR of what the edit must keep (the background for product edits, the
product for background edits), the automatic region's IoU with the true changed region, both fills inside the
region (``edit`` vs ``detail``: the photo's own fine detail kept inside, as PSNR of the high-pass) and seconds per
item.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from tight_pipeline.reporting import sheets
from tight_pipeline.demo_model.products import (BACKGROUNDS, HELDOUT_SEED_OFFSET, ProductSpec,
                                                dominant_colour, iou, product_region, render_product)
from tight_pipeline.method import region
from tight_pipeline.method.factory import load_engine
from tight_pipeline.method.items import ItemRequest
from tight_pipeline.method.specs import resolve_model_spec
from tight_pipeline.method.presets import load_preset

SIZE = 256
SEED = 7


def edits_for(spec: ProductSpec) -> list[tuple[str, str, str]]:
    """(kind, edit id, prompt): a new colour, a pattern (striped, or dotted for a striped product), a new backdrop."""
    colour = next(c for c in ("blue", "red", "green", "yellow", "purple") if c != spec.colour)
    pattern = "dotted" if spec.pattern == "striped" else "striped"
    backdrop = next(b for b in ("mint", "grey", "beige", "white") if b != spec.background)
    return [("colour", "colour", dataclasses.replace(spec, colour=colour).caption),
            ("pattern", "pattern", dataclasses.replace(spec, pattern=pattern).caption),
            ("background", "background", dataclasses.replace(spec, background=backdrop).caption)]


def high_pass(image: np.ndarray) -> np.ndarray:
    x = image[..., :3].astype(np.float64)
    return x - ndimage.gaussian_filter(x, (2, 2, 0))


def psnr_of(a, b, where) -> float | None:
    return region.psnr(a, b, where)


def measure(shots, preset, engine, mode: str) -> tuple[list[dict], list]:
    rows, outputs = [], []
    for shot in shots:
        photo = np.asarray(shot.image)
        edits = edits_for(shot.spec)
        truth = {"colour": shot.mask, "pattern": shot.mask, "background": ~shot.mask}
        regions = {e: region.EditRegion("whole") for _, e, _ in edits}  # the shipped default is studio
        if mode == "given":
            regions = {e: region.EditRegion("mask", truth[kind]) for kind, e, _ in edits}
        elif mode == "auto":
            regions = {e: region.EditRegion("auto") for _, e, _ in edits}
        t0 = time.perf_counter()
        result = engine.edit_items([ItemRequest(shot.image, shot.caption, [(e, p) for _, e, p in edits],
                                                regions=regions)], preset)[0]
        seconds = time.perf_counter() - t0
        if isinstance(result, BaseException):
            raise result
        outputs.append(result)
        recon = np.asarray(result.reconstruction)
        for kind, edit_id, _ in edits:
            out = result.full_edits[edit_id]
            spec = dataclasses.replace(shot.spec)
            row = {"shot": shot.spec.caption, "kind": kind, "mode": mode, "seconds": seconds,
                   "region_s": result.timings.region_s,
                   "fraction": result.edit_scores[edit_id]["region_fraction"],
                   "fill": result.edit_scores[edit_id]["region_fill"],
                   "correlation": region.structure_correlation(
                       np.asarray(result.edits[edit_id]), recon,
                       np.asarray(Image.fromarray(truth[kind]).resize(recon.shape[1::-1], Image.Resampling.BOX)))}
            if kind == "background":
                new = edits_for(spec)[2][2].split(" on a ")[1].split()[0]
                bg = out[~shot.mask][:, :3].astype(np.float64).mean(0)
                row["success"] = bool(np.linalg.norm(bg - BACKGROUNDS[new]) < np.linalg.norm(bg - BACKGROUNDS[spec.background]))
                row["kept_db"] = psnr_of(out, photo, shot.mask)
            else:
                row["kept_db"] = psnr_of(out, photo, ~shot.mask)
                row["shape_iou"] = iou(product_region(Image.fromarray(out), shot.background), shot.mask)
                if kind == "colour":
                    target = edits_for(spec)[0][2].split()[1]
                    row["success"] = dominant_colour(Image.fromarray(out), shot.mask) == target
            mask = result.region_masks[edit_id]
            row["region_iou"] = iou(mask, truth[kind])
            if mode != "whole":  # both fills on the same edit: the photo's own detail kept inside the region
                for fill in ("edit", "detail", "recolour"):
                    alt = region.composite(photo, np.asarray(result.edits[edit_id]), recon, mask, fill)
                    inner = ndimage.binary_erosion(mask, iterations=region.band_px(SIZE, SIZE))
                    row[f"detail_db_{fill}"] = psnr_of(high_pass(alt), high_pass(photo) + 0, inner) if inner.any() else None
                    if kind == "colour":
                        row[f"success_{fill}"] = dominant_colour(Image.fromarray(alt), shot.mask) == row.get("success") and \
                            dominant_colour(Image.fromarray(alt), shot.mask) == edits_for(spec)[0][2].split()[1]
            rows.append(row)
    return rows, outputs


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for mode in ("whole", "auto", "given"):
        for kind in ("colour", "pattern", "background"):
            sel = [r for r in rows if r["mode"] == mode and r["kind"] == kind]
            if not sel:
                continue

            def mean(key, pick=sel):
                values = [r[key] for r in pick if r.get(key) is not None]
                return (float(np.mean(values)), float(np.min(values))) if values else (None, None)

            out.append({"mode": mode, "kind": kind, "n": len(sel),
                        "success": mean("success") if kind != "pattern" else (None, None),
                        "kept_db": mean("kept_db"), "shape_iou": mean("shape_iou"), "region_iou": mean("region_iou"),
                        "fraction": mean("fraction"), "correlation": mean("correlation"),
                        "detail_edit": mean("detail_db_edit"), "detail_detail": mean("detail_db_detail"),
                        "detail_recolour": mean("detail_db_recolour"),
                        "fills": {f: sum(r["fill"] == f for r in sel) for f in ("edit", "detail", "recolour")}})
    return out


def table(summ: list[dict], seconds: dict) -> str:
    def fmt(pair, digits=1, pct=False):
        m, lo = pair
        if m is None:
            return "-"
        return f"{m:.0%} " if pct else f"{m:.{digits}f} (worst {lo:.{digits}f})"

    lines = ["| region | edit | success | kept (dB, at 256 px) | shape IoU | region IoU | fill used (edit/detail/recolour) | "
             "fine detail inside, fill edit / detail / recolour (dB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summ:
        kept = "100 (exact)" if s["kept_db"][1] is not None and s["kept_db"][1] >= 100 else fmt(s["kept_db"])
        lines.append(f"| {s['mode']} | {s['kind']} | {fmt(s['success'], pct=True)} | {kept} | {fmt(s['shape_iou'], 3)} | "
                     f"{fmt(s['region_iou'], 3)} | {s['fills']['edit']}/{s['fills']['detail']}/{s['fills']['recolour']} | "
                     f"{fmt(s['detail_edit'])} / {fmt(s['detail_detail'])} / {fmt(s['detail_recolour'])} |")
    lines.append("")
    lines.append("Seconds per item (3 edits, engine + composite): " + ", ".join(f"{m} {v:.2f} s" for m, v in seconds.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=12)
    parser.add_argument("--preset", default="catalog-balanced")
    parser.add_argument("--out", default="docs/region")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = load_engine(resolve_model_spec("catalog-demo"))
    preset = load_preset(args.preset)
    shots = [render_product(ProductSpec.sample(SEED + HELDOUT_SEED_OFFSET, 2000 + i), size=SIZE)
             for i in range(args.shots)]
    engine.edit_items([ItemRequest(shots[0].image, shots[0].caption, [("x", shots[0].caption)])], preset)  # warm-up
    rows, outputs, seconds = [], {}, {}
    for mode in ("whole", "auto", "given"):
        t0 = time.perf_counter()
        got, outs = measure(shots, preset, engine, mode)
        seconds[mode] = (time.perf_counter() - t0) / len(shots)
        rows += got
        outputs[mode] = outs
    summ = summary(rows)
    text = table(summ, seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"preset": args.preset, "shots": args.shots, "size": SIZE,
                                                  "summary": summ, "seconds": seconds, "rows": rows}, indent=1))
    (out / "table.md").write_text(text + "\n")
    # the picture: input at full size | today's output | region-true (auto) | region-true (given), for 3 shots
    entries = []
    for k in range(min(3, len(shots))):
        for edit_id in ("colour", "background"):
            auto = outputs["auto"][k]
            entries.append((f"{shots[k].caption} -> {edit_id}", [
                ("input 256 px", shots[k].image),
                ("today: whole, 64 px up", Image.fromarray(outputs["whole"][k].full_edits[edit_id])),
                ("auto region", sheets.outline(Image.fromarray(auto.full_edits[edit_id]),
                                               Image.fromarray(auto.region_masks[edit_id].astype(np.uint8) * 255))),
                ("given mask", Image.fromarray(outputs["given"][k].full_edits[edit_id])),
            ]))
    sheets.contact_sheet(entries, tile=256).save(out / "comparison.png")
    print(text)


if __name__ == "__main__":
    main()
