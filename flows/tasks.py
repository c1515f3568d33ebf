"""Prefect tasks shared by the flows: I/O tasks retry with backoff; the compute task does not."""

from __future__ import annotations

import os
import sys

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

import pandas as pd
from tqdm import tqdm
import pyarrow.compute as pc

from tight_pipeline.data import scores, storage

from tight_pipeline.reporting import tracking
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.job import JobResult
from tight_pipeline.pipeline.submit import run_anywhere

IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 10, 30])


def flow_timeout_s() -> float | None:
    """``$TP_FLOW_TIMEOUT_S`` (a deployment's job variables set it; prefect.yaml): a hung flow run is stopped."""
    value = os.environ.get("TP_FLOW_TIMEOUT_S")
    return float(value) if value else None


def log_plan(config: JobConfig, plan) -> dict:
    """The run's plan in the flow run's logs (what ``--dry-run`` prints), when the job has made it and before any
    model is loaded: the manifest is planned once per run. Bad rows are reported, not fatal."""
    logger = get_run_logger()
    for message in plan.invalid_sample:
        logger.warning(message)
    logger.info("manifest %s: %d valid items (%d to do, %d done before), %d invalid rows, digest %s, planned in %.1f s",
                storage.redact(config.manifest), plan.items, plan.todo_items, plan.candidate_items, plan.invalid_rows,
                plan.manifest_digest[:12], plan.plan_s)
    if plan.changed_items:
        logger.info("%d of the items to do were done before for another request (an edit's prompt, mask, photo URI or "
                    "region changed under the same ids): they run again, e.g. %s", plan.changed_items,
                    ", ".join(plan.changed_sample[:5]))
    return {"items": plan.items, "invalid": plan.invalid_rows, "digest": plan.manifest_digest, "by_preset": plan.by_preset}


@task(name="open-mlflow-run", **IO_RETRIES)
def open_tracking(config: JobConfig, flow_name: str, tags: dict) -> dict:
    """The MLflow run opens when the job starts (RUNNING while it runs; its duration is the job's)."""
    return tracking.open_run(flow_name, config.run_id, tags)


@task(name="edit-items")
def edit_items(config: JobConfig, flow_name: str = "tight-pipeline") -> JobResult:
    """The Ray Data job (compute: no Prefect retries; per-item errors are rows, resume is built in)."""
    # Keyed, so it is listed on Prefect's Artifacts page (latest value per key) as well as on the run.
    progress_id = create_progress_artifact(progress=0.0, key=f"{flow_name}-progress",
                                           description=f"{flow_name} {config.run_id}: items edited (%)")

    last = [0.0]
    # On a terminal: one bar (items done / total, rate, ETA) instead of Ray Data's per-operator bars.
    bar = tqdm(desc=flow_name, unit="item", disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        # At most one API call per 5 % (a catalog run has thousands of items).
        pct = 100.0 * done / max(total, 1)
        if pct - last[0] >= 5.0 or done == total:
            update_progress_artifact(progress_id, progress=pct)
            last[0] = pct

    try:
        # Here, or as a Ray Job when RAY_ADDRESS is the job API (this host is not a Ray node): its log lines come here.
        logger = get_run_logger()
        result = run_anywhere(config, progress=progress, log_line=lambda line: logger.info("[ray job] %s", line),
                              metadata={"prefect_flow": flow_name, "prefect_flow_run_id": str(flow_run.id or "")},
                              on_plan=lambda plan: log_plan(config, plan))
    finally:
        bar.close()
    update_progress_artifact(progress_id, progress=100.0)
    return result


@task(name="write-contact-sheet", **IO_RETRIES)
def write_contact_sheet(result: JobResult) -> tuple[str, object]:
    sheet = tracking.build_contact_sheet(result.sample_rows())
    uri = storage.join(result.config.output, "runs", result.config.run_id, "contact_sheet.png")
    storage.write_bytes_atomic(uri, storage.encode_png(sheet))
    return uri, sheet


def run_facts(result: JobResult) -> tracking.RunFacts:
    """The job's result as the plain values MLflow records (the library's tracking never sees job types)."""
    cfg, plan = result.config, result.plan
    params: dict = {"actors": cfg.actors, "min_actors": cfg.min_actors or cfg.actors, "actor_cpus": cfg.actor_cpus,
                    "gpus_per_actor": "by device" if cfg.gpus_per_actor is None else cfg.gpus_per_actor,
                    "batch_size": cfg.batch_size, "recheck_photos": cfg.recheck_photos}
    request = cfg.variant_request()
    if request is not None:  # a variant job: the run's default count and style set (items may override)
        params.update({"variants.n": request.n, "variants.style_set": request.style_set.name,
                       "variants.style_set_hash": request.style_set.hash,
                       "variants.styles": " | ".join(request.style_set.styles)})
    return tracking.RunFacts(
        run_id=cfg.run_id, output=cfg.output, manifest=cfg.manifest, manifest_digest=plan.manifest_digest,
        default_preset=result.preset, presets=tuple(result.presets.values()), model_name=result.model.name,
        model_params=result.model.to_dict(), model_digest=result.model_digest, model_spec_digest=result.model.digest,
        wall_s=result.wall_s, processed_items=result.processed_items, counts=dict(result.counts),
        scores_uri=result.scores_uri, params=params, manifest_filter=result.manifest_filter(),
        plan={"items": plan.items, "invalid_rows": plan.invalid_rows, "to_do": plan.todo_items,
              "done_before": plan.candidate_items, "changed_request": plan.changed_items},
    )


@task(name="track-in-mlflow", **IO_RETRIES)
def track_run(result: JobResult, sheet, sheet_uri: str, flow_name: str, extra_tags: dict | None = None,
              mlflow_run_id: str | None = None) -> dict:
    facts = run_facts(result)
    worst = tracking.worst_rows_of(facts)
    links = tracking.log_run(facts, sheet=sheet, flow_name=flow_name, extra_tags=extra_tags, contact_sheet_uri=sheet_uri,
                             mlflow_run_id=mlflow_run_id, worst=worst)
    return {**links, "worst": worst}


def _link(label: str, url: str | None, fallback: str) -> str:
    return f"[{label}]({url})" if url else f"{label}: `{fallback}`"


def _image(label: str, url: str | None) -> str:
    return f"![{label}]({url})" if url else ""


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
        # items run again because an edit's prompt, mask, photo URI or region changed under the same ids
        "items_changed_request": result.plan.changed_items,
        "wall_s": round(result.wall_s, 1),
        "failure_rate": round(result.failure_rate, 4),
        "scores": storage.redact(result.scores_uri),
        "contact_sheet": storage.redact(sheet_uri),
        "mlflow_run_id": links.get("mlflow_run_id"),
        "mlflow": links.get("mlflow_run_link"),
    }
    create_table_artifact(table=[{"field": k, "value": str(v)} for k, v in summary.items()],
                          key=f"{flow_name}-summary", description="tight-pipeline run summary")
    worst = links.get("worst")
    if worst is not None and len(worst):
        create_table_artifact(
            table=[{"item_id": r.item_id, "edit_id": r.edit_id, "status": r.status,
                    "psnr_vs_input": "" if pd.isna(r.psnr_vs_input) else f"{float(r.psnr_vs_input):.2f}",
                    "ssim_vs_input": "" if pd.isna(r.ssim_vs_input) else f"{float(r.ssim_vs_input):.3f}",
                    "edit_change": "" if pd.isna(r.edit_change) else f"{float(r.edit_change):.3f}",
                    "error": "" if pd.isna(r.error) else str(r.error)[:300]} for r in worst.itertuples()],
            key=f"{flow_name}-worst-items",
            description="failures first, then the ok rows with the lowest reconstruction PSNR vs the input (20 at most)",
        )
    bad = scores.head(result.config.output, 100, filter=result.manifest_filter() & (pc.field("status") != "ok"))
    if len(bad):
        create_table_artifact(
            table=[{"item_id": r.item_id, "edit_id": r.edit_id, "status": r.status, "error": r.error} for r in bad.itertuples()],
            key=f"{flow_name}-failures", description="rows that did not succeed (first 100)",
        )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    state = "**failed**: failure rate above the limit" if result.failed else "succeeded"
    mlflow_url = links.get("mlflow_run_link", "")
    create_markdown_artifact(
        markdown="\n".join(line for line in [
            f"### {flow_name} `{result.config.run_id}`: {state}",
            f"rows: {counts} · items processed {result.processed_items}, done before {result.skipped_items} · "
            f"{result.wall_s:.0f} s",
            "",
            "- " + _link("MLflow run", mlflow_url if mlflow_url.startswith("http") else None, mlflow_url),
            "- " + _link("contact sheet", storage.browser_url(sheet_uri) or links.get("contact_sheet_url"),
                         storage.redact(sheet_uri)),
            "- " + _link("worst items", links.get("worst_items_url"), "MLflow run artifact worst_items.png"),
            f"- scores (Parquet): `{storage.redact(result.scores_uri)}`",
            "",
            _image("contact sheet", links.get("contact_sheet_url")),
            _image("worst items", links.get("worst_items_url")),
        ]),
        key=f"{flow_name}-links", description="links to MLflow, the contact sheet and the worst items",
    )
    return summary
