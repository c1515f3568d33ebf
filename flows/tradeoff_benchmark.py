"""Trade-off benchmark: sweep the adapter scale on a sample of a manifest, to choose presets.

For each scale s the sample is run with preset ``<base>@s`` (inversion and edit scale = s). Logged to one
MLflow run: a table (CSV + Markdown) and a plot of reconstruction (PSNR vs the VAE round-trip) against
edit strength (mean pixel change of the edits from the reconstruction), one point per scale.
"""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.tasks import IO_RETRIES
from tight_pipeline import plots, storage, tracking
from tight_pipeline.job import JobConfig, run_job
from tight_pipeline.manifest import read_manifest


@task(name="write-sample-manifest", **IO_RETRIES)
def write_sample(manifest: str, output: str, sample: int) -> str:
    parsed = read_manifest(manifest)
    lines = [json.dumps({"item_id": i.item_id, "image_uri": i.image_uri, "source_prompt": i.source_prompt,
                         "edits": [{"edit_id": e.edit_id, "prompt": e.prompt} for e in i.edits]})
             for i in parsed.items[:sample]]
    uri = storage.join(output, "_manifests", f"sample-{parsed.digest[:12]}-{sample}.jsonl")
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())
    return uri


@task(name="run-scale")
def run_scale(manifest: str, output: str, preset: str, model: str | None) -> dict:
    result = run_job(JobConfig(manifest=manifest, output=output, preset=preset, model=model))
    ok = result.rows[result.rows["status"] == "ok"]
    items = ok.drop_duplicates(["item_id"])
    return {
        "preset": preset, "scale": float(preset.split("@")[1]), "items": int(len(items)),
        "psnr_vs_vae": float(items["psnr_vs_vae"].mean()), "ssim_vs_vae": float(items["ssim_vs_vae"].mean()),
        "psnr_vs_input": float(items["psnr_vs_input"].mean()), "edit_change": float(ok["edit_change"].mean()),
        "errors": int((result.rows["status"] != "ok").sum()),
    }


@task(name="log-tradeoff", **IO_RETRIES)
def log_tradeoff(table: pd.DataFrame, plot: bytes, manifest: str, base_preset: str) -> str:
    return tracking.log_tradeoff(table, plot, manifest, base_preset)


@flow(name="tradeoff-benchmark", log_prints=True)
def tradeoff_benchmark(manifest: str, output: str, scales: list[float] | None = None, sample: int = 8,
                       base_preset: str = "balanced", model: str | None = None) -> dict:
    scales = scales or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    sample_uri = write_sample(manifest, output, sample)
    points = [run_scale(sample_uri, output, f"{base_preset}@{s:g}", model) for s in scales]
    table = pd.DataFrame(points)
    plot = plots.tradeoff_curve(table)
    storage.write_bytes_atomic(storage.join(output, "tradeoff", f"{base_preset}.png"), plot)
    run_id = log_tradeoff(table, plot, manifest, base_preset)
    create_table_artifact(table=table.round(4).to_dict("records"), key="tradeoff-table",
                          description="adapter scale vs reconstruction and edit strength")
    return {"mlflow_run_id": run_id, "table": table.to_dict("records")}
