"""MLflow tracking, driver side only (the fluent API is not thread-safe; actors never log).

One MLflow run per pipeline run: the preset (all fields + hash) and model spec as params, the manifest as
an input dataset (URI + digest), aggregate metrics, and artifacts: the Parquet scores (or a link when large),
a contact sheet PNG and the preset YAML. Presets are tracked too, in the experiment ``tight-pipeline-presets``
(one run per preset hash), and every pipeline run is tagged with the preset run it used.

With no ``MLFLOW_TRACKING_URI`` the store is ``sqlite:///<TIGHT_PIPELINE_HOME>/mlflow.db`` (always explicit:
MLflow falls back to a file store when ./mlruns exists).
"""

from __future__ import annotations

import io
import re
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from PIL import Image

from dataclasses import dataclass, field
from typing import Any

from tight_pipeline.data import scores, storage

from tight_pipeline.reporting import sheets
from tight_pipeline.method.presets import Preset
from tight_pipeline.settings import state_dir

PRESETS_EXPERIMENT = "tight-pipeline-presets"
TRADEOFF_EXPERIMENT = "tight-pipeline-tradeoff"  # trade-off sweeps and demo-model evaluations
BENCHMARK_EXPERIMENT = "tight-pipeline-benchmark"  # edit benchmarks (PIE-Bench protocol, peers side by side)
MAX_INLINE_ROWS = 20_000  # this run's rows attached to the MLflow run up to this many; a link above


@dataclass(frozen=True)
class RunFacts:
    """What MLflow records of one finished job, as plain values (``flows/tasks.run_facts`` builds it from the
    job's result, so this module knows nothing of the job's types). The rows themselves are read back from
    the scores dataset under ``output``: this run's by ``run_id``, the manifest's by ``manifest_filter``."""

    run_id: str
    output: str
    manifest: str
    manifest_digest: str
    default_preset: Preset
    presets: tuple[Preset, ...]
    model_name: str
    model_params: dict[str, Any]
    model_digest: str  # the spec's settings + its weights (Parquet ``model_digest``)
    model_spec_digest: str
    wall_s: float
    processed_items: int
    counts: dict[str, int]
    scores_uri: str
    plan: dict[str, int] = field(default_factory=dict)  # items, invalid_rows, to_do, done_before
    params: dict[str, Any] = field(default_factory=dict)  # run settings worth a param (actors, batch size, variants)
    manifest_filter: Any = None  # pyarrow expression: this manifest's rows under this run's presets

    def run_rows(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The rows this run wrote (current ones), only ``columns``."""
        return scores.read_latest(self.output, columns, filter=pc.field("run_id") == self.run_id)


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{state_dir() / 'mlflow.db'}"


def connect():
    """The mlflow module, pointed at ``tracking_uri()``."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


# MLflow 3 opens an experiment without this tag on its GenAI "Traces" page; ours are model runs with metrics.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(mlflow, name: str) -> str:
    """Id of experiment ``name`` (created on first use, with local artifacts for a SQLite store), tagged as a
    model-development experiment so that the UI opens on its runs."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") is None:
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp.experiment_id
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
        artifact_location = (state_dir() / "mlartifacts" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)


def for_people(value: float, digits: int = 5) -> float:
    """A metric rounded to ``digits`` significant digits for the UI (full precision stays in Parquet)."""
    return float(f"{value:.{digits}g}") if np.isfinite(value) else value


def open_run(flow_name: str, run_id: str, tags: dict | None = None, experiment: str = "tight-pipeline") -> dict[str, str]:
    """Open the job's MLflow run when the job starts (status RUNNING), so that its duration is the job's;
    ``log_run(..., mlflow_run_id=...)`` fills and closes it, ``fail_run`` closes it as FAILED."""
    mlflow = connect()
    exp_id = experiment_id(mlflow, experiment)
    run = mlflow.MlflowClient().create_run(exp_id, run_name=f"{flow_name}-{run_id}",
                                           tags={"flow": flow_name, "run_id": run_id, **(tags or {})})
    return {"mlflow_run_id": run.info.run_id, "mlflow_experiment_id": exp_id,
            "mlflow_run_link": run_link(exp_id, run.info.run_id)}


def fail_run(mlflow_run_id: str, message: str) -> None:
    """Close a run opened by ``open_run`` as FAILED, with the error as a tag (first 500 characters)."""
    client = connect().MlflowClient()
    client.set_tag(mlflow_run_id, "error", storage.redact(message)[:500])
    client.set_terminated(mlflow_run_id, status="FAILED")


WORST_COLUMNS = ["item_id", "edit_id", "preset", "status", "psnr_vs_input", "ssim_vs_input", "psnr_vs_vae",
                 "edit_change", "adapter_scale", "auto_reason", "error", "source_prompt", "preset_hash", "input_uri", "reconstruction_uri", "edit_uri"]


def worst_rows(rows: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The rows a reviewer should look at first: failures, then ok rows with the lowest reconstruction PSNR
    vs the input (the worst-kept photos), at most ``n``."""
    rows = rows.reindex(columns=WORST_COLUMNS)
    bad = rows[rows["status"] != "ok"]
    ok = rows[rows["status"] == "ok"].assign(_psnr=lambda f: pd.to_numeric(f["psnr_vs_input"], errors="coerce"))
    ok = ok.sort_values(["_psnr", "item_id", "edit_id"], na_position="first").drop(columns="_psnr")
    return pd.concat([bad.sort_values(["item_id", "edit_id"]), ok]).head(n).reset_index(drop=True)


def worst_rows_of(facts: RunFacts, n: int = 20) -> pd.DataFrame:
    """``worst_rows`` over the manifest's current rows, reading two score columns for all of them and every
    column only for the ``n`` picked (catalog-size runs)."""
    light = scores.read_latest(facts.output, ["status", "psnr_vs_input"], filter=facts.manifest_filter)
    picked = worst_rows(light, n)[scores.KEY] if len(light) else light.reindex(columns=scores.KEY)
    if picked.empty:
        return worst_rows(light, 0)
    keep = pc.field("item_id").isin(sorted(set(picked["item_id"])))
    full = scores.read_latest(facts.output, filter=keep if facts.manifest_filter is None else facts.manifest_filter & keep)
    return picked.merge(full, on=scores.KEY, how="left").reindex(columns=WORST_COLUMNS)


def artifact_url(mlflow_run_id: str, path: str) -> str | None:
    """A URL a browser can load for an artifact of the run (MLflow server only; ``None`` for a local store)."""
    uri = tracking_uri()
    if not uri.startswith("http"):
        return None
    return f"{uri.rstrip('/')}/get-artifact?path={path}&run_uuid={mlflow_run_id}"


def track_preset(preset: Preset) -> str:
    """The MLflow run id that records ``preset`` (created once per preset hash)."""
    mlflow = connect()
    client = mlflow.MlflowClient()
    exp_id = experiment_id(mlflow, PRESETS_EXPERIMENT)
    found = client.search_runs([exp_id], f"tags.preset_hash = '{preset.hash}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=f"{preset.name}-{preset.hash}", tags={"preset_hash": preset.hash, "preset": preset.name})
    for key, value in preset.to_dict().items():
        client.log_param(run.info.run_id, key, value)
    client.log_text(run.info.run_id, preset.to_yaml(), "preset.yaml")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


AGGREGATED = ["psnr_vs_input", "ssim_vs_input", "psnr_vs_vae", "ssim_vs_vae", "edit_change"]


def aggregate_metrics(rows: pd.DataFrame, wall_s: float, processed_items: int,
                      counts: dict[str, int] | None = None) -> dict[str, float]:
    """Counts (``counts``, else from ``rows``), mean and percentiles of the scores in ``rows``, items per second."""
    counts = counts if counts is not None else {k: int(v) for k, v in rows["status"].value_counts().items()}
    metrics: dict[str, float] = {
        "rows": float(sum(counts.values())),
        "rows_ok": float(counts.get("ok", 0)),
        "rows_error": float(counts.get("error", 0)),
        "rows_invalid": float(counts.get("invalid", 0)),
        "items_processed": float(processed_items),
        "wall_s": wall_s,
        "items_per_s": processed_items / wall_s if wall_s > 0 else 0.0,
    }
    ok = rows[rows["status"] == "ok"]
    per_item = ok.drop_duplicates(["preset_hash", "item_id"])
    if "auto_reason" in ok:  # automatic strength: how many edits got each scale, and how many were flagged
        auto = ok[ok["auto_reason"].notna()]
        for scale, n in pd.to_numeric(auto["adapter_scale"], errors="coerce").value_counts().items():
            metrics[f"auto_scale_{scale:g}_edits"] = float(n)
        if len(auto):
            metrics["auto_flagged_edits"] = float((auto["auto_reason"] != "landed").sum())
    for col, frame in (("psnr_vs_input", per_item), ("ssim_vs_input", per_item), ("psnr_vs_vae", per_item),
                       ("ssim_vs_vae", per_item), ("edit_change", ok)):
        values = pd.to_numeric(frame[col], errors="coerce").dropna().to_numpy()
        if len(values):
            metrics[f"{col}_mean"] = float(values.mean())
            for q in (5, 50, 95):
                metrics[f"{col}_p{q}"] = float(np.percentile(values, q))
    return metrics


def build_contact_sheet(rows: pd.DataFrame, max_items: int = 8, order: list[str] | None = None) -> Image.Image:
    """input | reconstruction | edits for a sample of ok items, read back from the output store; ``order``:
    item ids in the order to show (default: sorted)."""
    ok = rows[rows["status"] == "ok"]
    entries = []
    groups = list(ok.groupby(["preset_hash", "item_id"], sort=True))
    if order is not None:
        rank = {item: i for i, item in enumerate(order)}
        groups.sort(key=lambda g: rank.get(g[0][1], len(rank)))
    for (_, item_id), group in groups[:max_items]:
        first = group.iloc[0]
        tiles = []
        for label, uri in [("input", first["input_uri"]), (f"recon {first['psnr_vs_vae']:.1f} dB vs VAE", first["reconstruction_uri"])]:
            tiles.append((label, _load(uri)))
        for _, r in group.iterrows():
            image = _load(r["edit_uri"])
            region_uri = r.get("region_uri")
            if isinstance(region_uri, str) and region_uri:  # the edit's region outlined on it
                try:
                    image = sheets.outline(image, _load(region_uri))
                except (FileNotFoundError, storage.StorageError, OSError):
                    pass
            tiles.append((edit_label(r), image))
        entries.append((f"{item_id}  [{first['preset']}]  \"{first['source_prompt']}\"", tiles))
    return sheets.contact_sheet(entries)


def edit_label(row) -> str:
    """An edit's tile label: its id, the fill of a region that is not the whole photo (``recolour``, ``detail``,
    ``edit``), and under automatic strength the scale it got (``!`` when flagged)."""
    get = row.get if hasattr(row, "get") else (lambda key, default=None: default)
    label = str(row["edit_id"])
    fill = get("region_fill")
    if get("region_source") in ("auto", "given") and isinstance(fill, str) and fill:
        label += f" ({fill})"
    reason = get("auto_reason")
    if isinstance(reason, str) and reason:
        return f"{label}  s={float(row['adapter_scale']):g}{'' if reason == 'landed' else ' !'}"
    return label


def _load(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB")


def log_run(facts: RunFacts, sheet: Image.Image, flow_name: str = "tight-pipeline",
            extra_tags: dict | None = None, experiment: str = "tight-pipeline",
            contact_sheet_uri: str | None = None, extra_artifacts: dict[str, bytes] | None = None,
            mlflow_run_id: str | None = None, worst: pd.DataFrame | None = None) -> dict[str, str]:
    """Log one pipeline run into ``mlflow_run_id`` (opened by ``open_run`` when the job started) or a new run,
    and close it. ``worst``: the rows to show first (``worst_rows``), logged as a previewable table and a picture.
    Returns ids and links (run id, UI link, artifact URLs when the tracking server serves them)."""
    mlflow = connect()
    exp_id = experiment_id(mlflow, experiment)
    preset_runs = {p.hash: track_preset(p) for p in facts.presets}
    default = facts.default_preset
    start = dict(run_id=mlflow_run_id) if mlflow_run_id else dict(experiment_id=exp_id, run_name=f"{flow_name}-{facts.run_id}")
    with mlflow.start_run(**start) as run:
        mlflow.set_tags({
            "flow": flow_name, "run_id": facts.run_id, "preset": default.name, "preset_hash": default.hash,
            "preset_run_id": preset_runs[default.hash], "model": facts.model_name,
            "output": storage.redact(facts.output), **(extra_tags or {}),
        })
        params = {f"preset.{k}": v for k, v in default.to_dict().items()}
        params.update({f"model.{k}": v for k, v in facts.model_params.items()})
        params["model.digest"] = facts.model_digest  # settings + weights
        params["model.spec_digest"] = facts.model_spec_digest
        params.update({
            "manifest_uri": storage.redact(facts.manifest), "manifest_digest": facts.manifest_digest,
            "output": storage.redact(facts.output),
            "presets_used": ",".join(sorted(f"{p.name}:{p.hash}" for p in facts.presets)), **facts.params,
        })
        mlflow.log_params({k: storage.redact(str(v))[:500] for k, v in params.items()})
        _log_input(mlflow, facts)
        # Scores of this run's rows only, read with the columns the aggregates need (catalog-size runs).
        scored = facts.run_rows(["status", "preset_hash", "item_id", *AGGREGATED, "adapter_scale", "auto_reason"])
        mlflow.log_metrics({k: for_people(v) for k, v in
                            aggregate_metrics(scored, facts.wall_s, facts.processed_items, facts.counts).items()})
        mlflow.log_text(default.to_yaml(), "preset.yaml")
        with tempfile.TemporaryDirectory() as tmp:
            if len(scored) <= MAX_INLINE_ROWS:
                parquet = Path(tmp) / "scores.parquet"
                facts.run_rows().to_parquet(parquet, index=False)
                mlflow.log_artifact(str(parquet))
            else:
                mlflow.log_text(storage.redact(facts.scores_uri), "scores_link.txt")
            sheet_path = Path(tmp) / "contact_sheet.png"
            sheet.save(sheet_path)
            mlflow.log_artifact(str(sheet_path))
            if worst is not None and len(worst):
                # A table MLflow previews (Artifacts tab, and the experiment's evaluation view), and the worst
                # ok items as a picture.
                mlflow.log_table(data=worst.astype(str).replace({"nan": "", "None": ""}), artifact_file="worst_items.json")
                worst_ok = worst[worst["status"] == "ok"]
                if len(worst_ok):
                    worst_path = Path(tmp) / "worst_items.png"
                    build_contact_sheet(worst_ok, max_items=6, order=list(dict.fromkeys(worst_ok["item_id"]))).save(worst_path)
                    mlflow.log_artifact(str(worst_path))
            for name, data in (extra_artifacts or {}).items():
                (Path(tmp) / name).write_bytes(data)
                mlflow.log_artifact(str(Path(tmp) / name))
        if contact_sheet_uri:
            mlflow.set_tag("contact_sheet_uri", storage.redact(contact_sheet_uri))
        run_id = run.info.run_id
    return {"mlflow_run_id": run_id, "mlflow_experiment_id": exp_id, "tracking_uri": storage.redact(tracking_uri()),
            "mlflow_run_link": run_link(exp_id, run_id),
            "contact_sheet_url": artifact_url(run_id, "contact_sheet.png"),
            "worst_items_url": artifact_url(run_id, "worst_items.png") if worst is not None and (worst["status"] == "ok").any() else None}


def _log_input(mlflow, facts: RunFacts) -> None:
    import warnings

    frame = pd.DataFrame([facts.plan or {"items": 0}])
    with warnings.catch_warnings():
        # MLflow 3.17 registers LocalArtifactDatasetSource twice, so any source string is "ambiguous" between it and
        # itself; and the plan's counts are integers, whose "may hold missing values" hint cannot apply here.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        dataset = mlflow.data.from_pandas(frame, source=storage.redact(facts.manifest), name="manifest",
                                          digest=facts.manifest_digest[:16])
        mlflow.log_input(dataset, context="manifest")


def run_link(experiment_id: str, run_id: str) -> str:
    uri = tracking_uri()
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}  →  experiment {experiment_id}, run {run_id}"


def log_tradeoff(table: pd.DataFrame, plot: bytes, manifest: str, base_preset: str) -> str:
    """One run of the trade-off sweep: one metric step per adapter scale, the table (CSV/Markdown), the plot."""
    mlflow = connect()
    exp_id = experiment_id(mlflow, TRADEOFF_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"tradeoff-{base_preset}") as run:
        mlflow.log_params({"manifest_uri": storage.redact(manifest), "base_preset": base_preset,
                           "scales": ",".join(f"{s:g}" for s in table["scale"])})
        for step, r in enumerate(table.itertuples()):
            mlflow.log_metrics({k: for_people(float(getattr(r, k))) for k in
                                ("scale", "psnr_vs_vae", "psnr_vs_input", "edit_change")}, step=step)
        mlflow.log_text(table.to_csv(index=False), "tradeoff.csv")
        mlflow.log_text(_markdown(table), "tradeoff.md")
        mlflow.log_image(Image.open(io.BytesIO(plot)), "tradeoff.png")
        return run.info.run_id


def log_benchmark(table: pd.DataFrame, rows: pd.DataFrame, plot: bytes, params: dict, missing: dict[str, str]) -> str:
    """One run of an edit benchmark: per peer and metric a metric ``<peer>.<metric>`` (as the table shows it), the
    table (CSV / Markdown), every scored row, the plot; each missing metric as a tag ``missing.<metric>`` = why."""
    from tight_pipeline.reporting import benchmark

    mlflow = connect()
    exp_id = experiment_id(mlflow, BENCHMARK_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"benchmark-{params.get('cases')}-cases") as run:
        mlflow.log_params({k: storage.redact(str(v)) for k, v in params.items()})
        mlflow.set_tags({f"missing.{k}": v[:500] for k, v in missing.items()})
        for r in table.to_dict("records"):
            key = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", str(r["peer"]))
            mlflow.log_metrics({f"{key}.{k}": float(v) for k, v in r.items()
                                if k not in ("peer",) and isinstance(v, (int, float)) and v == v})
        mlflow.log_text(table.to_csv(index=False), "benchmark.csv")
        mlflow.log_text(benchmark.markdown(table), "benchmark.md")
        mlflow.log_text(rows.to_csv(index=False), "rows.csv")
        mlflow.log_image(Image.open(io.BytesIO(plot)), "benchmark.png")
        return run.info.run_id


def _markdown(table: pd.DataFrame) -> str:
    try:
        return table.to_markdown(index=False)
    except ImportError:  # tabulate is optional
        return table.to_string(index=False)


REVIEW_STATES = ("approved", "rejected", "redo", "stale", "undecided")
REVIEW_TABLE = ["item_id", "edit_id", "preset", "preset_hash", "review_state", "reviewer", "decided_at", "note",
                "redo_preset", "override_checks", "checks_failed", "png_sha256"]


def mirror_review(state: pd.DataFrame, experiment: str = "tight-pipeline") -> dict[str, str]:
    """Mirror a review onto the MLflow runs whose outputs it is about: per run (the ``run_id`` that wrote the
    output), the counts per review state as tags ``review.<state>`` (searchable: ``tags.`review.approved` = '12'``)
    and the decisions as a table artifact ``review/decisions.json`` (replaced at each mirror: the latest state).
    ``state``: current ok scores rows with their decisions (``review.decisions.with_state``). Returns
    {run_id: MLflow run id} for the runs found (a run tracked elsewhere, or not at all, is left out)."""
    uri = tracking_uri()
    if not len(state) or (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()):
        return {}  # no run was ever tracked here: nothing to mirror onto (and no empty store made)
    mlflow = connect()
    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    found = {}
    for run_id, rows in state.groupby("run_id"):
        runs = client.search_runs([exp.experiment_id], f"tags.run_id = '{run_id}'", max_results=1)
        if not runs:
            continue
        mlflow_run_id = runs[0].info.run_id
        counts = rows["review_state"].value_counts()
        for name in REVIEW_STATES:
            client.set_tag(mlflow_run_id, f"review.{name}", str(int(counts.get(name, 0))))
        table = rows.reindex(columns=REVIEW_TABLE).astype(object).where(lambda f: f.notna(), None)
        client.log_dict(mlflow_run_id, {"columns": REVIEW_TABLE, "data": table.values.tolist()},
                        "review/decisions.json")
        found[run_id] = mlflow_run_id
    return found
