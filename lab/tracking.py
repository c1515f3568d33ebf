"""MLflow runs of the lab's evaluations (one run each, in the trade-off experiment), beside the product's."""

from __future__ import annotations

from pathlib import Path

from tight_pipeline.reporting.tracking import TRADEOFF_EXPERIMENT, connect, experiment_id, for_people


def log_demo_evaluation(report: dict, report_dir: Path) -> str:
    """One run in the trade-off experiment for ``python -m lab evaluate-demo-model``: params, one metric step
    per table row, and the report files."""
    mlflow = connect()
    exp_id = experiment_id(mlflow, TRADEOFF_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp_id, run_name="demo-model-evaluation") as run:
        mlflow.set_tags({"kind": "demo-model-evaluation", "model": report["model"]})
        mlflow.log_params({f"eval.{k}": str(v)[:500] for k, v in report["config"].items()})
        for step, r in enumerate(report["table"]):
            mlflow.log_metrics({k: for_people(float(r[k])) for k in
                                ("scale", "psnr_vs_input", "psnr_vs_vae", "edit_success", "iou", "background_psnr",
                                 "gain_vs_scale0_db", "gain_vs_vae_db", "headroom_db")}, step=step)
        for name in ("evaluation.json", "evaluation.md", "tradeoff.png", "examples.png"):
            mlflow.log_artifact(str(Path(report_dir) / name))
        return run.info.run_id


def log_auto_evaluation(report: dict, report_dir: Path) -> str:
    """One run in the trade-off experiment for ``python -m lab evaluate-auto-strength``: the auto row's and the
    judge's figures as metrics, the chosen scales' distribution, and the report files."""
    mlflow = connect()
    exp_id = experiment_id(mlflow, TRADEOFF_EXPERIMENT)
    auto = report["table"][-1]
    with mlflow.start_run(experiment_id=exp_id, run_name="auto-strength-evaluation") as run:
        mlflow.set_tags({"kind": "auto-strength-evaluation", "model": report["model"], "judge": report["judge"]})
        mlflow.log_params({f"eval.{k}": str(v)[:500] for k, v in report["config"].items()})
        mlflow.log_metrics({f"auto.{k}": for_people(float(auto[k])) for k in
                            ("edit_success", "iou", "background_psnr", "s_per_item", "mean_tries")})
        mlflow.log_metrics({"auto.cost_vs_fixed": for_people(report["cost_vs_fixed"]),
                            "judge.agreement": for_people(report["agreement"]["agreement"])})
        for scale, count in auto["chosen_scales"].items():
            mlflow.log_metric("auto.chosen_edits", count, step=int(round(float(scale) * 100)))
        for name in ("auto.json", "auto.md", "auto.png"):
            mlflow.log_artifact(str(Path(report_dir) / name))
        return run.info.run_id


def log_renoise_evaluation(report: dict, report_dir: Path) -> str:
    """One run in the trade-off experiment for ``python -m lab evaluate-renoise-parity``: every variant's
    reconstruction, edit success and cost as metrics (``<variant>.<figure>``), and the report files."""
    mlflow = connect()
    exp_id = experiment_id(mlflow, TRADEOFF_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp_id, run_name="renoise-parity-evaluation") as run:
        mlflow.set_tags({"kind": "renoise-parity-evaluation", "model": report["model"]})
        mlflow.log_params({f"eval.{k}": str(v)[:500] for k, v in report["config"].items()})
        for row in report["table"]:
            key = "".join(ch if ch.isalnum() else "_" for ch in row["row"]).strip("_")
            mlflow.log_metrics({f"{key}.{k}": for_people(float(row[k])) for k in
                                ("reconstruction_psnr_vs_vae", "edit_success", "iou", "background_psnr", "s_per_item")})
        for name in ("renoise.json", "renoise.md"):
            mlflow.log_artifact(str(Path(report_dir) / name))
        return run.info.run_id
