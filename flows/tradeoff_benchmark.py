"""Trade-off benchmark: sweep the adapter scale on a sample of a manifest, to choose presets.

The sample is run once per scale s with preset ``<base>@s`` (inversion and edit scale = s) - all scales in
**one** job: the sample manifest lists every item once per scale (item ``<id>.at<s>``, its own ``preset``), so
the actors load the model once for the whole sweep instead of once per scale. Logged to one MLflow run: a
table (CSV + Markdown) and a plot of reconstruction (PSNR vs the VAE round-trip) against edit strength (mean
pixel change of the edits from the reconstruction), one point per scale.
"""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.tasks import IO_RETRIES, flow_timeout_s
from tight_pipeline.reporting import plots, tracking
from tight_pipeline.data import storage
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.submit import run_anywhere
from tight_pipeline.data.manifest import read_manifest


@task(name="write-sweep-manifest", **IO_RETRIES)
def write_sample(manifest: str, output: str, sample: int, presets: list[str]) -> str:
    """The first ``sample`` items, once per preset of the sweep (ids ``<item_id>.at<scale>``)."""
    parsed = read_manifest(manifest)
    lines = [json.dumps({"item_id": f"{i.item_id}.at{p.split('@')[1]}", "image_uri": i.image_uri,
                         "source_prompt": i.source_prompt, "preset": p,
                         "edits": [{"edit_id": e.edit_id, "prompt": e.prompt} for e in i.edits]})
             for p in presets for i in parsed.items[:sample]]
    uri = storage.join(output, "_manifests", f"sweep-{parsed.digest[:12]}-{sample}-{len(presets)}.jsonl")
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())
    return uri


@task(name="run-sweep")
def run_sweep(manifest: str, output: str, presets: list[str], model: str | None) -> list[dict]:
    """One job over the sweep manifest; one point (means over its items) per preset."""
    result = run_anywhere(JobConfig(manifest=manifest, output=output, preset=presets[0], model=model))
    points = []
    for preset in presets:
        rows = result.rows[result.rows["preset"] == preset]
        ok = rows[rows["status"] == "ok"]
        items = ok.drop_duplicates(["item_id"])
        points.append({
            "preset": preset, "scale": float(preset.split("@")[1]), "items": int(len(items)),
            "psnr_vs_vae": float(items["psnr_vs_vae"].mean()), "ssim_vs_vae": float(items["ssim_vs_vae"].mean()),
            "psnr_vs_input": float(items["psnr_vs_input"].mean()), "edit_change": float(ok["edit_change"].mean()),
            "errors": int((rows["status"] != "ok").sum()),
        })
    return points


@task(name="log-tradeoff", **IO_RETRIES)
def log_tradeoff(table: pd.DataFrame, plot: bytes, manifest: str, base_preset: str) -> str:
    return tracking.log_tradeoff(table, plot, manifest, base_preset)


@flow(name="tradeoff-benchmark", log_prints=True, timeout_seconds=flow_timeout_s())
def tradeoff_benchmark(manifest: str, output: str, scales: list[float] | None = None, sample: int = 8,
                       base_preset: str = "balanced", model: str | None = None) -> dict:
    scales = scales or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    presets = [f"{base_preset}@{s:g}" for s in scales]
    sweep_uri = write_sample(manifest, output, sample, presets)
    table = pd.DataFrame(run_sweep(sweep_uri, output, presets, model))
    plot = plots.tradeoff_curve(table)
    storage.write_bytes_atomic(storage.join(output, "tradeoff", f"{base_preset}.png"), plot)
    run_id = log_tradeoff(table, plot, manifest, base_preset)
    create_table_artifact(table=table.round(4).to_dict("records"), key="tradeoff-table",
                          description="adapter scale vs reconstruction and edit strength")
    return {"mlflow_run_id": run_id, "table": table.to_dict("records")}
