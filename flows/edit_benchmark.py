"""Edit benchmark: peers on one PIE-Bench-format set, in one job, measured the way the field measures editors.

    tight-pipeline benchmark --data PIE-Bench/ --output out/ --peers balanced,balanced+mask,ledits-pp,off \\
        --clip ~/weights/clip-vit-large-patch14 --dino facebook/dino-vitb8

``--data`` is a folder in PIE-Bench's layout (``data/piebench.py``) or a manifest (JSONL / CSV / Parquet, any
storage) whose items' edits each have a mask (``mask_uri`` on the edit or the item; white = the edited region): a
catalog's own photos measured the same way, one case per (item, edit), its type from ``metadata.edit_type``.

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

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.tasks import IO_RETRIES, edit_items, flow_timeout_s
from tight_pipeline.data import piebench, storage
from tight_pipeline.data.manifest import read_manifest
from tight_pipeline.method.presets import PresetError, load_preset
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.reporting import benchmark, plots, tracking

EDIT_ID = "edit"


@dataclass(frozen=True)
class BenchCase:
    """One photo and one edit to measure, from a PIE-format folder or a manifest with masks."""

    key: str
    image_uri: str
    source_prompt: str
    target_prompt: str
    edit_type: str
    mask_uri: str | None = None  # a manifest's mask (white = edited); PIE cases decode theirs from the RLE
    pie: piebench.Case | None = None

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """The edited region, bool (h, w), for the photo's upright ``size`` (width, height)."""
        if self.pie is not None:
            return self.pie.mask(size)
        return storage.decode_mask(storage.read_bytes(self.mask_uri), size, what=f"case {self.key}: mask {self.mask_uri}")


def load_cases(data: str, types: list[str] | None = None, limit: int | None = None) -> list[BenchCase]:
    """The cases of ``data``: a PIE-format folder (``types``: ``editing_type_id``s), or a manifest whose every edit
    has a mask (``types``: ``metadata.edit_type`` values). A case without a mask is a ``BenchError`` naming it."""
    if "://" not in data and Path(data).expanduser().is_dir():
        bench = piebench.read_bench(data, types, limit)
        return [BenchCase(c.key, str(bench.image_file(c).resolve()), c.source_prompt, c.target_prompt, c.edit_type,
                          pie=c) for c in bench.cases]
    manifest = read_manifest(data)
    if manifest.invalid:
        first = manifest.invalid[0]
        raise piebench.BenchError(f"{data}: {len(manifest.invalid)} invalid rows (row {first.row}: {first.error})")
    cases = []
    for item in manifest.items:
        for edit in item.edits:
            kind = str(item.metadata.get("edit_type", "edit"))
            if types and kind not in types:
                continue
            mask = edit.mask_uri or item.mask_uri
            if not mask:
                raise piebench.BenchError(f"case {item.item_id}.{edit.edit_id}: no mask_uri on the edit or the item "
                                          "(a benchmark measures what an edit keeps outside its region)")
            cases.append(BenchCase(f"{item.item_id}.{edit.edit_id}", item.image_uri, item.source_prompt, edit.prompt,
                                   kind, mask_uri=mask))
            if limit and len(cases) >= limit:
                return cases
    if not cases:
        raise piebench.BenchError(f"{data}: no cases" + (f" of edit types {types}" if types else ""))
    return cases


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
def write_manifest(cases: list[BenchCase], output: str, peers: list[tuple[str, str, bool]]) -> str:
    """One manifest listing every case once per peer; PIE masks written as PNGs (white = edited) for ``+mask`` peers.
    Plain peers' edits say ``region: whole``: the method's own image is scored, as the field's protocol does."""
    lines = []
    for case in cases:
        mask_uri = case.mask_uri
        if mask_uri is None and any(m for _, _, m in peers):
            size = storage.decode_photo(storage.read_bytes(case.image_uri)).image.size
            mask_uri = storage.join(output, "benchmark", "masks", f"{case.key}.png")
            storage.write_bytes_atomic(mask_uri, storage.encode_png(Image.fromarray(case.mask(size).astype(np.uint8) * 255)))
        for peer, preset, with_mask in peers:
            # a plain peer is the method's own image (the field's protocol), whatever region the preset ships with
            rec = {"item_id": f"{case.key}.{slug(peer)}", "image_uri": case.image_uri,
                   "source_prompt": case.source_prompt, "preset": preset,
                   "edits": [{"edit_id": EDIT_ID, "prompt": case.target_prompt,
                              **({} if with_mask else {"region": "whole"})}],
                   "metadata": {"benchmark_case": case.key, "peer": peer, "edit_type": case.edit_type}}
            if with_mask:
                rec["mask_uri"] = mask_uri
            lines.append(json.dumps(rec))
    uri = storage.join(output, "benchmark", "manifest.jsonl")
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())
    return uri


def _image(uri: str) -> np.ndarray:
    """An image at ``uri`` as uint8 (H, W, 3), upright, alpha on white (``storage.decode_photo``)."""
    return np.asarray(storage.decode_photo(storage.read_bytes(uri)).image)


@task(name="score-benchmark")
def score(cases: list[BenchCase], rows: pd.DataFrame, peers: list[tuple[str, str, bool]],
          scorers: benchmark.Scorers) -> pd.DataFrame:
    """One row per (case, peer): status, seconds, every metric (``None`` where missing or failed), against the
    photo upright at its own size (as the outputs are)."""
    by_item = {r.item_id: r for r in rows[rows["edit_id"] == EDIT_ID].itertuples()}
    out = []
    for case in cases:
        try:
            source = _image(case.image_uri)
            mask = case.mask((source.shape[1], source.shape[0]))
            problem = None
        except Exception as exc:  # noqa: BLE001 - a case that cannot be scored is a row that says so
            problem = f"case {case.key}: cannot be scored: {exc}"
        for peer, preset, _ in peers:
            row = by_item.get(f"{case.key}.{slug(peer)}")
            rec = {"case": case.key, "edit_type": case.edit_type, "peer": peer, "preset": preset,
                   "status": getattr(row, "status", "missing"), "error": getattr(row, "error", None),
                   "seconds": getattr(row, "time_total_s", None), "edit_uri": getattr(row, "edit_uri", None)}
            if rec["status"] == "ok" and problem:
                rec.update(status="score_error", error=problem)
            elif rec["status"] == "ok":
                try:
                    edited = _image(row.edit_uri)
                    if edited.shape != source.shape:  # outputs at the working size (--output-size working)
                        edited = np.asarray(Image.fromarray(edited).resize((source.shape[1], source.shape[0]),
                                                                           Image.Resampling.LANCZOS))
                    rec.update(benchmark.score_case(source, edited, mask, case.target_prompt, scorers))
                except Exception as exc:  # noqa: BLE001
                    rec.update(status="score_error", error=f"case {case.key}, peer {peer}: cannot be scored: {exc}")
            out.append(rec)
    return pd.DataFrame(out)


@flow(name="edit-benchmark", log_prints=True, timeout_seconds=flow_timeout_s())
def edit_benchmark(data: str, output: str, peers: list[str], model: str | None = None, clip: str | None = None,
                   dino: str | None = None, lpips: bool = True, types: list[str] | None = None,
                   limit: int | None = None, actors: int | None = None) -> dict:
    parsed = parse_peers(peers)
    cases = load_cases(data, types, limit)
    manifest = write_manifest(cases, output, parsed)
    t0 = time.perf_counter()
    kwargs = {"actors": actors} if actors else {}
    result = edit_items(JobConfig(manifest=manifest, output=output, preset=parsed[0][1], model=model, **kwargs),
                        flow_name="edit-benchmark")  # progress: a bar on a terminal, an artifact in the Prefect UI
    job_s = time.perf_counter() - t0
    scorers = benchmark.Scorers.load(clip=clip or result.model.clip, dino=dino, lpips=lpips)
    rows = score(cases, result.rows, parsed, scorers)
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
    params = {"data": data, "peers": ",".join(peers), "cases": len(cases), "model": result.model.name,
              "model_digest": result.model_digest[:12], "job_s": round(job_s, 1), "best": best, "best_by": why}
    run_id = tracking.log_benchmark(table, rows, plot, params, scorers.missing)
    create_table_artifact(table=table.to_dict("records"), key="edit-benchmark",
                          description="PIE-Bench-protocol metrics by peer (missing metrics say so)")
    return {"mlflow_run_id": run_id, "table": table.to_dict("records"), "missing": scorers.missing, "best": best,
            "best_by": why, "by_type": types_table.to_dict("records"),
            "folder": folder, "cases": len(cases), "job_s": job_s}
