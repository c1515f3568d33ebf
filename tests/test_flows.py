"""The Prefect flows end to end on the real stack: SeaweedFS S3, embedded Ray, MLflow on SQLite, Prefect harness."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.corpus import image_files
from tight_pipeline.settings import state_dir


def _upload_manifest(fs, bucket: str, n: int = 3) -> str:
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    files = image_files()
    names = ["good.png", "gray.png", "cmyk.jpg", "palette.png"][:n]
    lines = []
    for i, name in enumerate(names):
        fs.pipe(f"{bucket}/in/img/{name}", files[name])
        lines.append({"item_id": f"sku-{i}", "image_uri": f"img/{name}", "source_prompt": "a product photo",
                      "locales": {"de-DE": "ein Produktfoto, Weihnachten", "ja-JP": "製品写真"}})
    lines.append({"item_id": "sku-bad", "image_uri": "img/nope.png", "source_prompt": "x", "edits": [{"edit_id": "a", "prompt": "y"}]})
    fs.pipe(f"{bucket}/in/manifest.jsonl", ("\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n").encode())
    return f"s3://{bucket}/in/manifest.jsonl"


@pytest.mark.drill  # end to end through Ray (and Prefect): make drills (make test stays under 7 minutes)
def test_catalog_localization_on_s3_tracks_everything_and_leaks_nothing(s3, ray_session, prefect_harness, tiny_model_dir):
    import mlflow
    from prefect.client.orchestration import get_client

    from flows.catalog_localization import catalog_localization
    from tight_pipeline.reporting import tracking

    fs = s3.filesystem()
    manifest = _upload_manifest(fs, "catalog")
    summary = catalog_localization(manifest=manifest, output="s3://catalog/out", preset="smoke", model=str(tiny_model_dir))
    assert summary["status_ok"] == 6 and summary["status_error"] == 1 and summary["rows"] == 7
    assert summary["items_processed"] == 4

    # Parquet and images are on S3, under deterministic keys.
    from tight_pipeline.data import scores as scores_dataset

    assert fs.glob("catalog/out/scores/*/part-*.parquet")  # parts written by the workers, straight to S3
    scores = scores_dataset.read_latest("s3://catalog/out")
    assert len(scores) == 7 and scores[["item_id", "edit_id"]].duplicated().sum() == 0
    ok = scores[scores["status"] == "ok"]
    for uri in ok["edit_uri"]:
        assert uri.startswith("s3://catalog/out/") and fs.exists(uri)
    assert fs.exists(summary["contact_sheet"])

    # MLflow: params, metrics, artifacts, and the preset tracked on its own.
    mlflow.set_tracking_uri(tracking.tracking_uri())
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.params["preset.name"] == "smoke" and run.data.params["preset.hash"] == ok["preset_hash"].iloc[0]
    assert run.data.params["manifest_uri"] == manifest
    assert run.data.metrics["rows_ok"] == 6 and run.data.metrics["rows_error"] == 1
    assert run.data.metrics["psnr_vs_vae_mean"] > 0 and run.data.metrics["items_per_s"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"contact_sheet.png", "scores.parquet", "preset.yaml"} <= artifacts
    assert run.inputs.dataset_inputs[0].dataset.digest
    preset_run = mlflow.get_run(run.data.tags["preset_run_id"])
    assert preset_run.data.params["hash"] == run.data.params["preset.hash"]

    # Monitoring: the run spans the job, opens as a model experiment, shows rounded metrics, the worst items.
    assert run.info.status == "FINISHED"
    assert (run.info.end_time - run.info.start_time) / 1000 >= summary["wall_s"]
    assert mlflow.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(v == float(f"{v:.5g}") for v in run.data.metrics.values())
    assert run.data.metrics["psnr_vs_vae_mean"] != round(run.data.metrics["psnr_vs_vae_mean"])  # rounded, not cut
    assert {"worst_items.json", "worst_items.png"} <= artifacts
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/worst_items.json")  # log_table's split format
    worst = pd.DataFrame(table["data"], columns=table["columns"])
    assert worst["item_id"].iloc[0] == "sku-bad" and "nope.png" in worst["error"].iloc[0]
    ok_psnr = pd.to_numeric(worst["psnr_vs_input"].iloc[1:])
    assert ok_psnr.is_monotonic_increasing and len(worst) == 7
    assert run.data.tags["prefect_flow_run_id"] == summary["prefect_flow_run_id"]

    # Prefect: the summary table and links artifacts exist for the flow run.
    import asyncio

    async def artifacts_of_run():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[summary["prefect_flow_run_id"]])))

    found = asyncio.run(artifacts_of_run())
    assert {"table", "markdown", "progress"} <= {a.type for a in found}
    keys = {a.key for a in found}
    assert {"catalog-localization-progress", "catalog-localization-worst-items", "catalog-localization-links",
            "catalog-localization-summary", "catalog-localization-failures"} <= keys
    links = next(a for a in found if a.key == "catalog-localization-links").data
    assert "succeeded" in links and "contact_sheet.png" in links and "mlflow ui --backend-store-uri" in links
    # what is left for a person: the review's counts, the command that opens it, the contact sheet
    review = next(a for a in found if a.key == "catalog-localization-review").data
    assert "tight-pipeline review --output s3://catalog/out" in review and "| undecided |" in review
    assert "contact_sheet.png" in review
    worst_table = json.loads(next(a for a in found if a.key == "catalog-localization-worst-items").data)
    assert worst_table[0]["item_id"] == "sku-bad" and worst_table[1]["psnr_vs_input"]

    # Second run: nothing new to do but the broken row.
    again = catalog_localization(manifest=manifest, output="s3://catalog/out", preset="smoke", model=str(tiny_model_dir))
    assert again["items_processed"] == 1 and again["items_skipped_done_before"] == 3 and again["rows"] == 7
    assert again["items_changed_request"] == 0

    # Third run: one locale's prompt changed on S3, photos rechecked on S3 (unchanged): that item and the broken one.
    text = fs.cat("catalog/in/manifest.jsonl").decode()
    fs.pipe("catalog/in/manifest.jsonl", text.replace("製品写真", "製品写真、冬", 1).encode())
    third = catalog_localization(manifest=manifest, output="s3://catalog/out", preset="smoke",
                                 model=str(tiny_model_dir), recheck_photos=True)
    assert third["items_processed"] == 2 and third["items_changed_request"] == 1 and third["rows"] == 7
    current = scores_dataset.read_latest("s3://catalog/out").set_index(["item_id", "edit_id"])
    assert current.loc[("sku-0", "ja-JP"), "edit_prompt"] == "製品写真、冬"
    record = json.loads(fs.cat(f"catalog/out/{current.loc[('sku-0', 'ja-JP'), 'preset_hash']}/sku-0/source.json"))
    assert record["image_sha256"] == current.loc[("sku-0", "ja-JP"), "image_sha256"]

    # No credential anywhere: MLflow DB and artifacts, Parquet, outputs, Prefect DB.
    secrets = [s3.secret_key.encode(), s3.access_key.encode()]
    home = state_dir()
    for path in list(home.rglob("*")):
        if path.is_file() and "seaweedfs" not in path.parts and path.stat().st_size < 200_000_000:
            data = path.read_bytes()
            assert not any(s in data for s in secrets), f"credential found in {path}"
    for key in fs.find("catalog/out"):
        assert not any(s in fs.cat(key) for s in secrets), f"credential found in s3://{key}"


@pytest.mark.drill  # end to end through Ray (and Prefect): make drills (make test stays under 7 minutes)
def test_variant_generation_and_tradeoff_benchmark(tmp_path, ray_session, prefect_harness, tiny_model_dir):
    import mlflow

    from flows.tradeoff_benchmark import tradeoff_benchmark
    from flows.variant_generation import variant_generation
    from tight_pipeline.reporting import tracking

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image_files()["good.png"])
    (tmp_path / "img" / "b.png").write_bytes(image_files()["gray.png"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"item_id": i, "image_uri": f"img/{i}.png", "source_prompt": "a mug",
                                               "edits": [{"edit_id": "blue", "prompt": "a blue mug"}]}) for i in "ab") + "\n")
    out = str(tmp_path / "out")
    summary = variant_generation(manifest=str(manifest), output=out, n=2, preset="smoke", model=str(tiny_model_dir))
    assert summary["status_ok"] == 4 and summary["items_processed"] == 2  # 2 items x 2 variants
    from tight_pipeline.data import scores as scores_dataset
    from tight_pipeline.data.variants import VariantRequest, load_style_set

    first = scores_dataset.read_latest(out)
    request = VariantRequest(2, load_style_set("product"))
    for item in "ab":
        rows = first[first["item_id"] == item]
        assert sorted(rows["edit_id"]) == sorted(e for e, _ in request.edits(item, "a mug"))
        assert rows["time_invert_s"].nunique() == 1  # one inversion served both variants
        meta = json.loads(rows["metadata"].iloc[0])["variants"]
        assert meta["style_set"] == "product" and meta["style_set_hash"] == request.style_set.hash
        sheet = tmp_path / "out" / rows["preset_hash"].iloc[0] / item / "variants.png"
        assert sheet.stat().st_size > 1000  # input + 2 variants, labelled

    again = variant_generation(manifest=str(manifest), output=out, n=2, preset="smoke", model=str(tiny_model_dir))
    assert again["items_processed"] == 0 and again["status_ok"] == 4  # resumed: nothing redone
    more = variant_generation(manifest=str(manifest), output=out, n=3, preset="smoke", model=str(tiny_model_dir))
    assert more["status_ok"] == 6 and more["items_processed"] == 2
    rows = scores_dataset.read(out).to_pandas()
    assert (rows["run_id"] == first["run_id"].iloc[0]).sum() == 4  # the first two variants were not redone
    new = rows[rows["run_id"] != first["run_id"].iloc[0]]
    assert len(new) == 2 and set(new["item_id"]) == {"a", "b"}
    assert not set(zip(new["item_id"], new["edit_id"])) & set(zip(first["item_id"], first["edit_id"]))

    result = tradeoff_benchmark(manifest=str(manifest), output=str(tmp_path / "sweep"), scales=[0.0, 1.0], sample=2,
                                base_preset="smoke", model=str(tiny_model_dir))
    table = pd.DataFrame(result["table"])
    assert table["scale"].tolist() == [0.0, 1.0] and (table["items"] == 2).all()
    assert table["psnr_vs_vae"].iloc[0] != table["psnr_vs_vae"].iloc[1]  # the scale changes the outcome
    swept = scores_dataset.read_latest(str(tmp_path / "sweep"))
    assert swept["run_id"].nunique() == 1  # every scale in one job: the model loaded once for the sweep
    assert sorted(swept["item_id"].unique()) == ["a.at0", "a.at1", "b.at0", "b.at1"]
    assert (tmp_path / "sweep" / "tradeoff" / "smoke.png").stat().st_size > 1000
    mlflow.set_tracking_uri(tracking.tracking_uri())
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["mlflow_run_id"])}
    assert {"tradeoff.csv", "tradeoff.png"} <= artifacts


def test_deploy_registers_the_three_scheduled_flows_and_the_publish_flow(prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["deploy"])
    assert result.exit_code == 0, result.output
    assert "registered 4 deployments" in result.output

    async def deployments():
        async with get_client() as client:
            return await client.read_deployments()

    found = {d.name: d for d in asyncio.run(deployments())}
    assert {"nightly-localization", "weekly-variants", "monthly-tradeoff", "publish-approved"} <= set(found)
    assert not found["publish-approved"].schedules  # a person starts it (or a nightly run's automation)
    assert found["nightly-localization"].schedules[0].schedule.cron == "0 2 * * *"
    assert found["nightly-localization"].parameters["max_failure_rate"] == 0.05
    # From infra/prefect/prefect.yaml (the one definition): its pool, one run at a time, its cluster's address.
    nightly = found["nightly-localization"]
    assert nightly.work_pool_name == "tight-pipeline-pool" and nightly.entrypoint.startswith("flows/")
    assert nightly.global_concurrency_limit is not None and nightly.global_concurrency_limit.limit == 1
    # The job API, fully qualified: a flow run in another namespace (the kubernetes pool's) resolves it too.
    assert nightly.job_variables["env"]["RAY_ADDRESS"] == "http://tight-pipeline-head-svc.tight-pipeline.svc:8265"


def test_deploy_without_a_server_says_what_to_start(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    proc = subprocess.run([sys.executable, "-c", "from flows.cli import app; app()", "deploy"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: deploy needs a Prefect server")


def test_an_mlflow_run_that_fails_is_closed_as_failed(tmp_path, monkeypatch):
    import mlflow

    from tight_pipeline.reporting import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    opened = tracking.open_run("catalog-localization", "run-x", {"prefect_flow_run_id": "abc"})
    mlflow.set_tracking_uri(tracking.tracking_uri())
    assert mlflow.get_run(opened["mlflow_run_id"]).info.status == "RUNNING"
    tracking.fail_run(opened["mlflow_run_id"], "RuntimeError: Ray died")
    run = mlflow.get_run(opened["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: Ray died"
    assert run.data.tags["prefect_flow_run_id"] == "abc"
