"""Prefect tasks shared by the flows: I/O tasks retry with backoff; the compute task does not."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.logging import get_run_logger

import pyarrow.compute as pc

from tight_pipeline import scores, storage, tracking
from tight_pipeline.job import JobConfig, JobResult, plan_job, run_job

IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 10, 30])


@task(name="validate-manifest", **IO_RETRIES)
def validate_manifest(config: JobConfig) -> dict:
    """Stream and validate the manifest before any model is loaded (what ``--dry-run`` prints); bad rows are
    reported, not fatal."""
    logger = get_run_logger()
    plan = plan_job(config)
    for message in plan.invalid_sample:
        logger.warning(message)
    logger.info("manifest %s: %d valid items (%d to do, %d done before), %d invalid rows, digest %s, planned in %.1f s",
                storage.redact(config.manifest), plan.items, plan.todo_items, plan.candidate_items, plan.invalid_rows,
                plan.manifest_digest[:12], plan.plan_s)
    return {"items": plan.items, "invalid": plan.invalid_rows, "digest": plan.manifest_digest, "by_preset": plan.by_preset}


@task(name="edit-items")
def edit_items(config: JobConfig) -> JobResult:
    """The Ray Data job (compute: no Prefect retries; per-item errors are rows, resume is built in)."""
    progress_id = create_progress_artifact(progress=0.0, key=None, description="items edited in this run (%)")

    last = [0.0]

    def progress(done: int, total: int) -> None:
        # At most one API call per 5 % (a catalog run has thousands of items).
        pct = 100.0 * done / max(total, 1)
        if pct - last[0] >= 5.0 or done == total:
            update_progress_artifact(progress_id, progress=pct)
            last[0] = pct

    result = run_job(config, progress=progress)
    update_progress_artifact(progress_id, progress=100.0)
    return result


@task(name="write-contact-sheet", **IO_RETRIES)
def write_contact_sheet(result: JobResult) -> tuple[str, object]:
    sheet = tracking.build_contact_sheet(result.sample_rows())
    uri = storage.join(result.config.output, "runs", result.config.run_id, "contact_sheet.png")
    storage.write_bytes_atomic(uri, storage.encode_png(sheet))
    return uri, sheet


@task(name="track-in-mlflow", **IO_RETRIES)
def track_run(result: JobResult, sheet, sheet_uri: str, flow_name: str, extra_tags: dict | None = None) -> dict:
    return tracking.log_run(result, sheet=sheet, flow_name=flow_name, extra_tags=extra_tags, contact_sheet_uri=sheet_uri)


@task(name="publish-summary")
def publish_summary(result: JobResult, links: dict, sheet_uri: str, flow_name: str) -> dict:
    """Prefect UI artifacts: a summary table, failures, links to MLflow and the contact sheet."""
    summary = {
        "flow": flow_name,
        "run_id": result.config.run_id,
        "rows": result.n_rows,
        **{f"status_{k}": v for k, v in sorted(result.counts.items())},
        "items_processed": result.processed_items,
        "items_skipped_done_before": result.skipped_items,
        "wall_s": round(result.wall_s, 1),
        "failure_rate": round(result.failure_rate, 4),
        "scores": storage.redact(result.scores_uri),
        "contact_sheet": storage.redact(sheet_uri),
        "mlflow_run_id": links.get("mlflow_run_id"),
        "mlflow": links.get("mlflow_run_link"),
    }
    create_table_artifact(table=[{"field": k, "value": str(v)} for k, v in summary.items()],
                          key=f"{flow_name}-summary", description="tight-pipeline run summary")
    bad = scores.head(result.config.output, 100, filter=result.manifest_filter() & (pc.field("status") != "ok"))
    if len(bad):
        create_table_artifact(
            table=[{"item_id": r.item_id, "edit_id": r.edit_id, "status": r.status, "error": r.error} for r in bad.itertuples()],
            key=f"{flow_name}-failures", description="rows that did not succeed (first 100)",
        )
    create_markdown_artifact(
        markdown=(f"### {flow_name} `{result.config.run_id}`\n\n"
                  f"- scores: `{storage.redact(result.scores_uri)}`\n- contact sheet: `{storage.redact(sheet_uri)}`\n"
                  f"- MLflow: {links.get('mlflow_run_link')}\n- counts: `{json.dumps(result.counts)}`\n"),
        key=f"{flow_name}-links",
    )
    return summary
