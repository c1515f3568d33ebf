"""Catalog scale with the passthrough engine: planning time, driver memory, rows/s end to end, resumed planning.

    .venv/bin/python benchmarks/bench_scale.py --items 1000000 --plan-only     # --dry-run figures at 10^6 items
    .venv/bin/python benchmarks/bench_scale.py --items 100000                   # end to end at 10^5 items

Generates an N-item JSONL manifest (3 locales each; images: 16 distinct small PNGs reused), then
1. plans it (``plan_job``: stream, validate, anti-join against ``scores/``) — seconds and driver peak RSS;
2. unless ``--plan-only``: runs it end to end (``run_job``, ``--model passthrough``: decode, resize, write PNGs
   and score parts; no diffusion) and reports rows/s, the rows in ``scores/`` and that each key is there once;
3. marks half of the items done (``--plan-only``: writes ok rows for them as a Parquet part, as a finished run
   would, PNG checks aside) and plans again: the resumed run's planning time (each edit's request digest looked up);
   ``--plan-only`` also plans against rows without request digests (written by versions before them: a second
   lookup per edit).
Each phase runs in a fresh Python process, so the peak RSS is that phase's own. Prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASE = r"""
import json, os, resource, sys, time
os.environ.setdefault("TIGHT_PIPELINE_HOME", sys.argv[4])
from tight_pipeline.settings import apply_local_defaults; apply_local_defaults()
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.planner import plan_job
from tight_pipeline.pipeline.job import run_job
from tight_pipeline.data import scores
cfg = JobConfig(manifest=sys.argv[2], output=sys.argv[3], preset="draft", model="passthrough",
                actors=int(os.environ.get("ACTORS", "1")), actor_cpus=0.5, batch_size=int(os.environ.get("BATCH", "256")))
t = time.perf_counter()
out = {}
if sys.argv[1] == "plan":
    p = plan_job(cfg)
    out = {"items": p.items, "todo": p.todo_items, "done_before": p.candidate_items, "invalid": p.invalid_rows}
elif sys.argv[1] == "run":
    r = run_job(cfg)
    out = {"processed_items": r.processed_items, "skipped_items": r.skipped_items, "counts": r.counts}
elif sys.argv[1] == "count":
    t0 = time.perf_counter()
    keys = scores.read(sys.argv[3], scores.KEY).to_pandas()
    out = {"rows_stored": len(keys), "keys": int(len(keys.drop_duplicates())), "read_s": round(time.perf_counter() - t0, 1)}
out["wall_s"] = round(time.perf_counter() - t, 1)
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def phase(name: str, manifest: str, output: str, home: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PHASE, name, manifest, output, home], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_manifest(folder: Path, n: int) -> str:
    import numpy as np
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    for k in range(16):
        rng = np.random.default_rng(k)
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")).save(folder / "img" / f"{k}.png")
    path = folder / "manifest.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "item_id": f"sku-{i:08d}", "image_uri": f"img/{i % 16}.png",
                "source_prompt": "a white ceramic mug on a wooden table, studio light",
                "locales": {"de-DE": "ein weisser Keramikbecher auf einem Holztisch",
                            "fr-FR": "une tasse en ceramique blanche sur une table en bois",
                            "ja-JP": "a white ceramic mug, japanese catalog style"},
                "metadata": {"sku": str(i), "category": "kitchen"}}) + "\n")
    return str(path)


def mark_half_done(manifest: str, output: str, home: str, legacy: bool = False) -> None:
    """Ok rows for every other item, written like a finished run's part (so the resumed plan has work to skip);
    ``legacy``: without request digests, as versions before them wrote rows."""
    code = r"""
import json, os, sys
os.environ.setdefault("TIGHT_PIPELINE_HOME", sys.argv[3])
from tight_pipeline.data import scores
from tight_pipeline.method.specs import resolve_model_spec
from tight_pipeline.method.fingerprints import model_digest
from tight_pipeline.method.presets import load_preset
from tight_pipeline.data.manifest import iter_manifest
digest, preset = model_digest(resolve_model_spec("passthrough")), load_preset("draft")
legacy = sys.argv[4] == "legacy"  # rows as versions before request digests wrote them
rows = []
for chunk in iter_manifest(sys.argv[1], chunk_rows=50_000):
    for item in chunk.items:
        if item.row % 2 == 0:
            continue
        for e in item.edits:
            rows.append({"item_id": item.item_id, "edit_id": e.edit_id, "preset_hash": preset.hash, "status": "ok",
                         "model_digest": digest, "finished_at": "2026-01-01T00:00:00", "run_id": "seeded",
                         "request_digest": None if legacy else item.request_digest(e)})
        if len(rows) >= 300000:
            scores.write_part(sys.argv[2], "seeded", rows, "seed"); rows = []
scores.write_part(sys.argv[2], "seeded", rows, "seed")
"""
    subprocess.run([sys.executable, "-c", code, manifest, output, home, "legacy" if legacy else "current"], check=True,
                   env={**os.environ, "TIGHT_PIPELINE_HOME": home})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--plan-only", action="store_true", help="plan and resumed plan only (no Ray run)")
    ap.add_argument("--work", default=None, help="folder for the manifest and outputs (default: a temp folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="tp-scale-"))
    home = str(work / "home")
    t0 = time.perf_counter()
    manifest = write_manifest(work / "in", args.items)
    report: dict = {"items": args.items, "locales": 3, "manifest_mb": round(os.path.getsize(manifest) / 2**20),
                    "generate_s": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count()}
    output = str(work / "out")
    report["plan"] = phase("plan", manifest, output, home)
    if not args.plan_only:
        report["run"] = phase("run", manifest, output, home)
        report["run"]["rows_per_s"] = round(sum(report["run"]["counts"].values()) / report["run"]["wall_s"], 1)
        report["stored"] = phase("count", manifest, output, home)
        report["resumed_plan"] = phase("plan", manifest, output, home)
    else:
        mark_half_done(manifest, output, home)
        report["resumed_plan"] = phase("plan", manifest, output, home)
        legacy = str(work / "out-legacy")
        mark_half_done(manifest, legacy, home, legacy=True)
        report["resumed_plan_legacy_rows"] = phase("plan", manifest, legacy, home)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
