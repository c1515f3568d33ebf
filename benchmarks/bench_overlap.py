"""Does the accelerator ever wait for the CPU? The real actor path on catalog-size photos, with a stand-in GPU.

    .venv/bin/python benchmarks/bench_overlap.py                  # phases at 1/4/12 MP, then the overlap table
    .venv/bin/python benchmarks/bench_overlap.py --phases-only    # only the per-phase CPU seconds
    .venv/bin/python benchmarks/bench_overlap.py --passthrough    # 400 x 600 photos, 3 edits, no hold (items/s)
    python3 benchmarks/bench_overlap.py --model DIR --preset balanced --items 16   # a real model (GPU: gpu_check.sh)

1. **Phases**: the CPU seconds one item costs at each photo size (1, 4, 12 MP; a JPEG catalog shot): decode, fit to
   the 1024-px working size, composite every edit at the photo's size (``region.finish``), encode the PNGs (PNG
   level 2, the default, and Pillow's default 6), write them (local disk). Single-threaded ``time.thread_time``.
2. **Overlap**: ``run_job`` end to end (embedded Ray on this machine's 2 cores, one actor, one item per batch; the
   actor reserves 1.5 CPUs so the plan-reading stage can run beside it, and its threads use both cores) with the
   ``passthrough`` model holding each item ``hold_s`` seconds without using the CPU (``ModelSpec.hold_s``: a stand-in
   for GPU time). Items/s in the steady state (from the rows' ``finished_at``: first to last) against the ideal
   ``1 / max(hold_s, cpu_per_item / 2)``, where ``cpu_per_item`` is phase 1's sum for that photo and edit count.
   ``in-line`` is the actor as it was before overlap (``actor_pipeline=1``, PNG level 6; it also wrote an
   ``input.png`` per item, which this emulation leaves out, so the baseline here is if anything flattered);
   ``overlap`` is the default (``actor_pipeline=3``, PNG level 2, no ``input.png`` where the photo is its own).
3. ``--model``: the same two modes with a real model instead of the stand-in (4-MP photos, one actor holding the
   accelerator): what a lent GPU measures (``benchmarks/gpu_check.sh``, section ``pipeline``).
Prints one JSON line per measurement and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"1 MP": (1024, 1024), "4 MP": (2048, 2048), "12 MP": (4000, 3000)}
HOLDS = (4.4, 1.3, 0.4)  # s per item: balanced on an H100 (docs/gpu.md), a mid preset, the few-step presets


def catalog_photo(width: int, height: int, seed: int = 0) -> bytes:
    """A studio shot as catalogs have them: a textured product with a printed label on a near-white backdrop,
    sensor noise, saved as a quality-90 JPEG (what compresses and decodes like a real one)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (244, 244, 242))
    draw = ImageDraw.Draw(img)
    box = (width // 4, height // 5, 3 * width // 4, 4 * height // 5)
    draw.rounded_rectangle(box, radius=width // 20, fill=(180, 40, 50))
    label = (width * 3 // 8, height * 2 // 5, width * 5 // 8, height * 3 // 5)
    draw.rectangle(label, fill=(250, 250, 250))
    for k in range(12):
        y = label[1] + (k + 1) * (label[3] - label[1]) // 14
        draw.line((label[0] + width // 40, y, label[2] - width // 40, y), fill=(30, 30, 30), width=max(1, width // 400))
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    pixels = np.asarray(img).astype(np.int16) + rng.normal(0, 3, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def phases(size: tuple[int, int], edits: int, repeat: int = 2) -> dict:
    """CPU seconds per item of each stage the actor runs outside the model (median of ``repeat``)."""
    from PIL import Image

    from tight_pipeline.data import storage
    from tight_pipeline.method import region
    from tight_pipeline.method.items import fit_size

    data = catalog_photo(*size)
    out_dir = Path(tempfile.mkdtemp(prefix="tpbench"))
    limits = storage.ImageLimits()
    runs = []
    for _ in range(repeat):
        t = {}
        c0 = time.thread_time()
        photo = storage.decode_photo(data, limits)
        t["decode"] = time.thread_time() - c0
        c0 = time.thread_time()
        w, h = fit_size(photo.image.width, photo.image.height, 1024, 8)
        fitted = np.asarray(photo.image.resize((w, h), Image.Resampling.BILINEAR))
        t["fit"] = time.thread_time() - c0
        c0 = time.thread_time()
        outputs = [region.upsize(fitted, photo.pixels)]
        for _ in range(edits):
            out, _, _ = region.finish(photo.pixels, fitted, fitted, region.EditRegion("whole", None))
            outputs.append(out)
        t["composite"] = time.thread_time() - c0
        for level in (2, 6):
            c0 = time.thread_time()
            encoded = [storage.encode_png(Image.fromarray(o), level) for o in outputs]
            t[f"encode_l{level}"] = time.thread_time() - c0
            t[f"png_mb_l{level}"] = sum(len(b) for b in encoded) / 1e6
        c0 = time.thread_time()
        for k, blob in enumerate(encoded):
            storage.write_bytes_atomic(str(out_dir / f"{k}.png"), blob)
        t["write"] = time.thread_time() - c0
        runs.append(t)
    shutil.rmtree(out_dir, ignore_errors=True)
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    med["cpu_overlap"] = med["decode"] + med["fit"] + med["composite"] + med["encode_l2"] + med["write"]
    med["cpu_inline"] = med["decode"] + med["fit"] + med["composite"] + med["encode_l6"] + med["write"]
    return {k: round(v, 3) for k, v in med.items()}


def run(photo: bytes, n_items: int, edits: int, hold_s: float, mode: str, work: Path, actor_cpus: float = 1.5,
        resolution: int = 1024, batch_size: int = 1, model: str | None = None, preset: str = "draft") -> dict:
    """Items/s of ``run_job`` in the steady state, one actor."""
    import pandas as pd

    from tight_pipeline.data import scores
    from tight_pipeline.pipeline.config import JobConfig
    from tight_pipeline.pipeline.job import run_job

    case = work / f"{mode}-{edits}e-{hold_s:g}s-{len(photo)}"
    shutil.rmtree(case, ignore_errors=True)
    (case / "img").mkdir(parents=True)
    (case / "img" / "p.jpg").write_bytes(photo)
    locales = {f"l{k}": f"a photo, variant {k}" for k in range(edits)}
    rows = [{"item_id": f"p-{i}", "image_uri": str(case / "img" / "p.jpg"), "source_prompt": "a product photo",
             "locales": locales} for i in range(n_items)]
    (case / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (case / "model.yaml").write_text(f"name: hold\nfamily: passthrough\nbase: none\nresolution: {resolution}\n"
                                     f"hold_s: {hold_s}\n")
    pipeline, level = (1, 6) if mode == "in-line" else (3, 2)
    config = JobConfig(manifest=str(case / "manifest.jsonl"), output=str(case / "out"), preset=preset,
                       model=model or str(case / "model.yaml"), actors=1, actor_cpus=actor_cpus,
                       batch_size=batch_size, actor_pipeline=pipeline, png_level=level)
    t0 = time.perf_counter()
    result = run_job(config)
    wall = time.perf_counter() - t0
    table = scores.read(str(case / "out")).to_pandas()
    done = pd.to_datetime(table.groupby("item_id")["finished_at"].max()).sort_values()
    span = (done.iloc[-1] - done.iloc[0]).total_seconds()
    rate = (len(done) - 1) / span if span > 0 else float("nan")
    shutil.rmtree(case, ignore_errors=True)
    return {"items_per_s": round(rate, 3), "wall_s": round(wall, 1), "ok_rows": result.counts.get("ok", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases-only", action="store_true")
    parser.add_argument("--passthrough", action="store_true", help="400 x 600 photos, 3 edits, hold 0, 1 actor CPU")
    parser.add_argument("--items", type=int, default=8, help="items per overlap case")
    parser.add_argument("--edits", default="1,4")
    parser.add_argument("--holds", default=",".join(str(h) for h in HOLDS))
    parser.add_argument("--model", help="a real model (folder, spec YAML or name) instead of the stand-in")
    parser.add_argument("--preset", default="balanced", help="with --model")
    parser.add_argument("--batch-size", type=int, default=1, help="with --model: items per model batch")
    args = parser.parse_args()
    os.environ.setdefault("TIGHT_PIPELINE_HOME", tempfile.mkdtemp(prefix="tpbench-home"))
    from tight_pipeline.settings import apply_local_defaults

    apply_local_defaults()
    work = Path(tempfile.mkdtemp(prefix="tpoverlap"))
    lines = []
    if args.passthrough:
        photo = catalog_photo(400, 600)
        for mode in ("in-line", "overlap"):
            got = run(photo, 48, 3, 0.0, mode, work, actor_cpus=1.0, resolution=64, batch_size=8)
            print(json.dumps({"case": "passthrough 400x600, 3 edits", "mode": mode, **got}), flush=True)
        return 0
    if args.model:
        photo = catalog_photo(*SIZES["4 MP"])
        for edits in [int(e) for e in args.edits.split(",")]:
            for mode in ("in-line", "overlap"):
                got = run(photo, args.items, edits, 0.0, mode, work, model=args.model, preset=args.preset,
                          batch_size=args.batch_size, actor_cpus=float(os.environ.get("ACTOR_CPUS", "1.5")))
                print(json.dumps({"photo": "4 MP", "model": args.model, "preset": args.preset, "edits": edits,
                                  "mode": mode, **got}), flush=True)
        return 0
    edits_list = [int(e) for e in args.edits.split(",")]
    cost = {}
    for name, size in SIZES.items():
        for edits in edits_list:
            cost[(name, edits)] = phases(size, edits)
            print(json.dumps({"phases": name, "edits": edits, **cost[(name, edits)]}), flush=True)
    if args.phases_only:
        return 0
    photo = catalog_photo(*SIZES["4 MP"])
    for edits in edits_list:
        for hold in [float(h) for h in args.holds.split(",")]:
            for mode in ("in-line", "overlap"):
                cpu = cost[("4 MP", edits)]["cpu_overlap" if mode == "overlap" else "cpu_inline"]
                ideal = 1 / max(hold, cost[("4 MP", edits)]["cpu_overlap"] / 2)
                got = run(photo, args.items, edits, hold, mode, work)
                line = {"photo": "4 MP", "edits": edits, "hold_s": hold, "mode": mode, "cpu_per_item_s": cpu,
                        "ideal_items_per_s": round(ideal, 3), **got,
                        "of_ideal": round(got["items_per_s"] / ideal, 2)}
                print(json.dumps(line), flush=True)
                lines.append(line)
    print("\n| edits | hold s/item | ideal items/s | in-line items/s (of ideal) | overlap items/s (of ideal) |")
    print("| --- | --- | --- | --- | --- |")
    for edits in edits_list:
        for hold in [float(h) for h in args.holds.split(",")]:
            a = next(x for x in lines if x["edits"] == edits and x["hold_s"] == hold and x["mode"] == "in-line")
            b = next(x for x in lines if x["edits"] == edits and x["hold_s"] == hold and x["mode"] == "overlap")
            print(f"| {edits} | {hold:g} | {b['ideal_items_per_s']:.3f} | {a['items_per_s']:.3f} ({a['of_ideal']:.2f}) "
                  f"| {b['items_per_s']:.3f} ({b['of_ideal']:.2f}) |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
