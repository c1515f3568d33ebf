"""Catalog localization: every item of a manifest × its locale prompts, edited with Tight Inversion.

    python -m flows.catalog_localization --manifest s3://bucket/m.jsonl --output s3://bucket/out
    (or: tight-pipeline run --manifest URL --output URL)
"""

from __future__ import annotations

import os
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.tasks import edit_items, flow_timeout_s, open_tracking, publish_summary, track_run, write_contact_sheet
from tight_pipeline.reporting import tracking
from tight_pipeline.method.specs import resolve_model_spec
from flows.choices import ChecksProfile, Count, Fraction, PngLevel, PresetName, Strength
from flows.review_state import review_state, summary_markdown
from tight_pipeline.data import storage
from tight_pipeline.pipeline.config import JobConfig, default_preset, join_preset
from tight_pipeline.pipeline.cluster import check_compute, ray_mode


@flow(name="catalog-localization", log_prints=True, timeout_seconds=flow_timeout_s())
def catalog_localization(
    manifest: str,
    output: str,
    preset: PresetName | None = None,
    strength: Strength | None = None,
    auto_strength: bool = False,
    model: str | None = None,
    actors: Count = JobConfig.actors,
    actor_cpus: float = JobConfig.actor_cpus,
    max_failure_rate: Fraction = JobConfig.max_failure_rate,
    item_timeout_s: float = JobConfig.item_timeout_s,
    max_pixels: int = JobConfig.max_pixels,
    min_actors: int = JobConfig.min_actors,
    gpus_per_actor: float | None = JobConfig.gpus_per_actor,
    batch_size: int = JobConfig.batch_size,
    actor_wait_s: float = JobConfig.actor_wait_s,
    output_size: Literal["input", "working"] = JobConfig.output_size,
    png_level: PngLevel = JobConfig.png_level,
    recheck_photos: bool = JobConfig.recheck_photos,
    strengths: list[Strength] | None = None,
    checks: ChecksProfile = JobConfig.checks,
    flow_label: str = "catalog-localization",
) -> dict:
    """One catalog run; the compute settings are ``JobConfig``'s, with its defaults (deployments set them per cluster). ``preset``
    (one of the shipped presets) at ``strength`` (its own when not given) or with automatic strength; items may name
    their own; ``strengths``: also render every item at these; ``checks``: the automatic checks' profile."""
    # No preset: the model family's default (flux-balanced for a FLUX model, else balanced).
    preset = join_preset(default_preset(preset, resolve_model_spec(model)), strength, auto_strength)
    config = JobConfig(manifest=manifest, output=output, preset=preset, model=model, actors=actors,
                       actor_cpus=actor_cpus, max_failure_rate=max_failure_rate,
                       item_timeout_s=item_timeout_s, max_pixels=max_pixels, min_actors=min_actors,
                       gpus_per_actor=gpus_per_actor, batch_size=batch_size, actor_wait_s=actor_wait_s,
                       output_size=output_size, png_level=png_level, recheck_photos=recheck_photos,
                       strengths=tuple(strengths or ()), checks=checks).with_run_id()
    return run_tracked(config, flow_label)


@task(name="review-artifact", retries=2, retry_delay_seconds=[5, 30])
def review_artifact(output: str, sheet_uri: str | None, flow_label: str) -> None:
    """What is left for a person: the output's review counts, the command that opens the review app, the contact
    sheet (a Markdown artifact, keyed so the Artifacts page shows the latest)."""
    text = summary_markdown(output, review_state(output))
    if sheet_uri:
        text += f"\n\nContact sheet: `{storage.redact(sheet_uri)}`"
    create_markdown_artifact(markdown=text, key=f"{flow_label}-review", description="left for a person to review")


def run_tracked(config: JobConfig, flow_label: str) -> dict:
    """Validate, open the MLflow run, edit, sheet, track, summarise: the body every catalog-style flow shares.
    The MLflow run spans the job and ends FAILED (with the error) when the job raises."""
    check_compute(config)  # impossible pool settings and unusable Ray addresses fail in one line before any work
    if ray_mode() == "submit":
        # The job plans (validates) the manifest on the cluster, where the weights' digest is, before any actor
        # starts; its plan's lines come to this flow run's logs.
        get_run_logger().info("submitting to Ray's job API at %s: the job validates and plans the manifest there",
                              os.environ["RAY_ADDRESS"])
    # Here the job plans the manifest once, inside the output's lease, and its plan is logged before Ray starts
    # (tasks.log_plan); a manifest that cannot be read fails the job, and the MLflow run is closed as FAILED.
    tags = {"prefect_flow_run_id": str(flow_run.id)}
    if os.environ.get("PREFECT_API_URL") and flow_run.ui_url:
        tags["prefect_flow_run_url"] = flow_run.ui_url  # a temporary server's URL would be dead after the run
    opened = open_tracking(config, flow_label, tags)
    try:
        result = edit_items(config, flow_label)
        sheet_uri, sheet = write_contact_sheet(result)
    except BaseException as exc:
        tracking.fail_run(opened["mlflow_run_id"], f"{type(exc).__name__}: {exc}")
        raise
    links = track_run(result, sheet, sheet_uri, flow_label, tags, opened["mlflow_run_id"])
    summary = publish_summary(result, links, sheet_uri, flow_label)
    review_artifact(config.output, sheet_uri, flow_label)
    summary["prefect_flow_run_id"] = str(flow_run.id)
    summary["prefect_flow_run_url"] = flow_run.ui_url
    summary["output"] = config.output
    summary["failed"] = result.failed
    return summary
