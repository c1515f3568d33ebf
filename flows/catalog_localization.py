"""Catalog localization: every item of a manifest × its locale prompts, edited with Tight Inversion.

    python -m flows.catalog_localization --manifest s3://bucket/m.jsonl --output s3://bucket/out
    (or: tight-pipeline run --manifest URL --output URL)
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.tasks import edit_items, publish_summary, track_run, validate_manifest, write_contact_sheet
from tight_pipeline.job import JobConfig


@flow(name="catalog-localization", log_prints=True)
def catalog_localization(
    manifest: str,
    output: str,
    preset: str = "balanced",
    model: str | None = None,
    actors: int = 1,
    actor_cpus: float = 1.0,
    max_failure_rate: float = 1.0,
    item_timeout_s: float = 0.0,
    max_pixels: int = 40_000_000,
    flow_label: str = "catalog-localization",
) -> dict:
    config = JobConfig(manifest=manifest, output=output, preset=preset, model=model, actors=actors,
                       actor_cpus=actor_cpus, max_failure_rate=max_failure_rate,
                       item_timeout_s=item_timeout_s, max_pixels=max_pixels).with_run_id()
    validate_manifest(config)
    result = edit_items(config)
    sheet_uri, sheet = write_contact_sheet(result)
    links = track_run(result, sheet, sheet_uri, flow_label, {"prefect_flow_run_id": str(flow_run.id)})
    summary = publish_summary(result, links, sheet_uri, flow_label)
    summary["prefect_flow_run_id"] = str(flow_run.id)
    summary["prefect_flow_run_url"] = flow_run.ui_url
    summary["output"] = output
    summary["failed"] = result.failed
    return summary
