"""Edit benchmark: peers on one PIE-Bench-format set, in one job, measured the way the field measures editors.

    tight-pipeline benchmark --data PIE-Bench/ --output out/ --peers balanced,balanced+mask,ledits-pp,off \\
        --clip ~/weights/clip-vit-large-patch14 --dino facebook/dino-vitb8

A *peer* is a preset name (``balanced``, ``catalog-sharp@auto``, ``ledits-pp`` for LEDITS++) with ``+mask`` for its
region-true output (the benchmark's own mask given to the edit: outside it the photo's pixels). Every case of the
set is listed once per peer in one manifest (item ``<case key>.<peer>``, its own ``preset``; the mask only for
``+mask`` peers), so one normal job — Ray actors, Parquet rows, resume — edits them all with the model loaded once.
Then every edit is scored against its source at the source's size with the benchmark's mask
(``reporting/benchmark.py``: PSNR / MSE / SSIM of the unedited part and the whole, structure distance, LPIPS, CLIP
whole and edited part), and one table (one row per peer, with seconds per item), one plot and one MLflow run are
written under ``<output>/benchmark/``. Scoring runs on the driver (CPU or its GPU): about 0.05 s per edit without
DINO/LPIPS on this CPU.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.tasks import IO_RETRIES, edit_items, flow_timeout_s
from tight_pipeline.data import piebench, storage
from tight_pipeline.method.presets import PresetError, load_preset
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.reporting import benchmark, plots, tracking

EDIT_ID = "edit"


def parse_peers(peers: list[str]) -> list[tuple[str, str, bool]]:
    """``[(peer, preset name, with mask)]``; an unknown preset is a ``PresetError`` naming it."""
    out = []
    for peer in peers:
        name, _, flag = peer.partition("+")
        if flag not in ("", "mask"):
            raise PresetError(f"peer {peer!r}: the only suffix is '+mask' (the benchmark's mask as the edit's region)")
        load_preset(name)
        out.append((peer, name, flag == "mask"))
    if len({p for p, _, _ in out}) != len(out):
        raise PresetError(f"peers {peers} name one peer twice")
    return out


def slug(peer: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", peer)


@task(name="write-benchmark-manifest", **IO_RETRIES)
def write_manifest(bench: piebench.Bench, output: str, peers: list[tuple[str, str, bool]]) -> str:
    """Masks as PNGs (white = edited) and one manifest listing every case once per peer."""
    lines = []
    for case in bench.cases:
        path = bench.image_file(case)
        with Image.open(path) as im:
            size = im.size
        mask_uri = storage.join(output, "benchmark", "masks", f"{case.key}.png")
        storage.write_bytes_atomic(mask_uri, storage.encode_png(Image.fromarray(case.mask(size).astype(np.uint8) * 255)))
        for peer, preset, with_mask in peers:
            rec = {"item_id": f"{case.key}.{slug(peer)}", "image_uri": str(path.resolve()),
                   "source_prompt": case.source_prompt, "preset": preset,
                   "edits": [{"edit_id": EDIT_ID, "prompt": case.target_prompt}],
                   "metadata": {"benchmark_case": case.key, "peer": peer, "edit_type": case.edit_type}}
            if with_mask:
                rec["mask_uri"] = mask_uri
            lines.append(json.dumps(rec))
    uri = storage.join(output, "benchmark", "manifest.jsonl")
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())
    return uri


def _image(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB"))


@task(name="score-benchmark")
def score(bench: piebench.Bench, rows: pd.DataFrame, peers: list[tuple[str, str, bool]],
          scorers: benchmark.Scorers) -> pd.DataFrame:
    """One row per (case, peer): status, seconds, every metric (``None`` where missing or failed)."""
    by_item = {r.item_id: r for r in rows[rows["edit_id"] == EDIT_ID].itertuples()}
    out = []
    for case in bench.cases:
        source = benchmark.load_image(bench.image_file(case))
        mask = case.mask((source.shape[1], source.shape[0]))
        for peer, preset, _ in peers:
            row = by_item.get(f"{case.key}.{slug(peer)}")
            rec = {"case": case.key, "edit_type": case.edit_type, "peer": peer, "preset": preset,
                   "status": getattr(row, "status", "missing"), "error": getattr(row, "error", None),
                   "seconds": getattr(row, "time_total_s", None), "edit_uri": getattr(row, "edit_uri", None)}
            if rec["status"] == "ok":
                edited = _image(row.edit_uri)
                if edited.shape != source.shape:  # outputs at the working size (--output-size working)
                    edited = np.asarray(Image.fromarray(edited).resize((source.shape[1], source.shape[0]),
                                                                       Image.Resampling.LANCZOS))
                rec.update(benchmark.score_case(source, edited, mask, case.target_prompt, scorers))
            out.append(rec)
    return pd.DataFrame(out)


@flow(name="edit-benchmark", log_prints=True, timeout_seconds=flow_timeout_s())
def edit_benchmark(data: str, output: str, peers: list[str], model: str | None = None, clip: str | None = None,
                   dino: str | None = None, lpips: bool = True, types: list[str] | None = None,
                   limit: int | None = None, actors: int | None = None) -> dict:
    parsed = parse_peers(peers)
    bench = piebench.read_bench(data, types, limit)
    manifest = write_manifest(bench, output, parsed)
    t0 = time.perf_counter()
    kwargs = {"actors": actors} if actors else {}
    result = edit_items(JobConfig(manifest=manifest, output=output, preset=parsed[0][1], model=model, **kwargs),
                        flow_name="edit-benchmark")  # progress: a bar on a terminal, an artifact in the Prefect UI
    job_s = time.perf_counter() - t0
    scorers = benchmark.Scorers.load(clip=clip or result.model.clip, dino=dino, lpips=lpips)
    rows = score(bench, result.rows, parsed, scorers)
    table = benchmark.summarize(rows, scorers.missing)
    types_table = benchmark.by_type(rows)
    best, why = benchmark.best_peer(table)
    folder = storage.join(output, "benchmark")
    plot = plots.benchmark_plot(table)
    storage.write_bytes_atomic(storage.join(folder, "table.csv"), table.to_csv(index=False).encode())
    storage.write_bytes_atomic(storage.join(folder, "table.md"), benchmark.markdown(table).encode())
    storage.write_bytes_atomic(storage.join(folder, "rows.csv"), rows.to_csv(index=False).encode())
    storage.write_bytes_atomic(storage.join(folder, "by_type.md"), benchmark.markdown(types_table).encode())
    storage.write_bytes_atomic(storage.join(folder, "plot.png"), plot)
    params = {"data": data, "peers": ",".join(peers), "cases": len(bench.cases), "model": result.model.name,
              "model_digest": result.model_digest[:12], "job_s": round(job_s, 1), "best": best, "best_by": why}
    run_id = tracking.log_benchmark(table, rows, plot, params, scorers.missing)
    create_table_artifact(table=table.to_dict("records"), key="edit-benchmark",
                          description="PIE-Bench-protocol metrics by peer (missing metrics say so)")
    return {"mlflow_run_id": run_id, "table": table.to_dict("records"), "missing": scorers.missing, "best": best,
            "best_by": why, "by_type": types_table.to_dict("records"),
            "folder": folder, "cases": len(bench.cases), "job_s": job_s}
