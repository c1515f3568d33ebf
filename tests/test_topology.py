"""The production topology on hosts that are hosts (infra/local/topology.py): a network namespace, an address, a
temp folder and a host name per role. The Prefect server, a process worker (not a Ray node), a GPU-less Ray head with
token auth, GPU nodes that join later, SeaweedFS and MLflow; deploy, trigger, kill a GPU node mid-run, trigger again,
refuse what cannot work, cancel a flow run, race two runs for one output. This file asserts on what the drill saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.drill, pytest.mark.timeout(1800)]


def _latest(rows: list[dict]) -> dict:
    latest: dict = {}
    for r in sorted(rows, key=lambda r: r["finished_at"]):
        latest[(r["preset_hash"], r["item_id"], r["edit_id"])] = r
    return latest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.fail("the topology drill needs network namespaces (unshare -n, ip netns: root, as CI is)")
    work = tmp_path_factory.mktemp("topology")
    out = work / "report.json"
    script = (f"ip link set lo up && exec {sys.executable} {ROOT / 'infra/local/topology.py'} "
              f"--workdir {work / 'run'} --report {out}")
    proc = subprocess.run(["unshare", "-n", "--", "bash", "-c", script], capture_output=True, text=True,
                          timeout=1700, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["ok"], data.get("error", "") + "\n" + proc.stdout[-3000:]
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "tpd" not in leftover, leftover  # the drill deleted the namespaces it made
    return data


def test_every_role_ran_on_its_own_host(report):
    hosts = report["hosts"]
    assert len(set(hosts.values())) == len(hosts) == 9 and all(ip.startswith("10.231.9.") for ip in hosts.values())
    nodes = {n["ip"] for n in report["nodes_at_start"] + report["nodes_at_end"]}
    assert hosts["worker"] not in nodes and hosts["operator"] not in nodes  # the flow runs' host is no Ray node
    assert {hosts["head"], hosts["gpu-1"], hosts["gpu-2"]} <= nodes


def test_the_flow_run_on_the_worker_host_drove_the_ray_job_on_the_other_hosts(report):
    first, second = report["first"], report["second"]
    assert first["state"] == "COMPLETED" and second["state"] == "COMPLETED", (first, second)
    for run in (first, second):
        assert run["work_pool"] == "drill-pool" and run["infrastructure_pid"]  # a process worker of the pool ran it
    job = report["first_ray_job"]
    assert job["status"] == "SUCCEEDED" and job["entrypoint"].startswith("tight-pipeline run-job --config")
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(job) and "RAY_AUTH_TOKEN" not in json.dumps(job)  # no credential
    rows = _latest(report["rows"])
    gpu_nodes = {n["node_id"] for n in report["nodes_at_start"] + report["nodes_at_end"] if n["gpus"] > 0}
    head = {n["node_id"] for n in report["nodes_at_end"] if n["is_head"]}
    assert {r["node_id"] for r in rows.values()} <= gpu_nodes and not ({r["node_id"] for r in rows.values()} & head)
    # MLflow holds the runs, linked to their Prefect flow runs, with artifacts uploaded to S3 (boto3) from the worker host.
    finished = {r["prefect_flow_run_id"]: r for r in report["mlflow_runs"] if r["status"] == "FINISHED"}
    assert report["first_run"] in finished and report["second_run"] in finished
    assert finished[report["first_run"]]["artifact_uri"].startswith("s3://drill/mlartifacts")
    assert finished[report["first_run"]]["artifacts"]
    # The Prefect server holds every flow run of the drill, each ended.
    states = {r["id"]: r["state"] for r in report["prefect_runs"]}
    assert states[report["first_run"]] == "COMPLETED" and states[report["cancel_run"]] == "CANCELLED"


def test_actors_waited_for_the_gpu_nodes_then_ran_one_per_gpu_node(report):
    assert report["pngs_before_gpus"] == 0  # nothing ran while the cluster had no GPU node
    assert report["first_ray_job_before_gpus"]["status"] == "RUNNING"  # the job waited on the head meanwhile
    per_node = defaultdict(set)
    for r in report["rows"]:
        assert r["gpu_ids"] == "0", r  # each actor was given its node's one GPU
        per_node[r["node_id"]].add(r["worker"])
    assert len(per_node) >= 2
    assert all(len(workers) == 1 for workers in per_node.values()), dict(per_node)  # one actor per GPU node


def test_a_gpu_node_killed_mid_run_is_survived_with_every_row_exactly_once(report):
    n = report["items"]
    assert 1 <= report["pngs_at_kill"] < n  # the kill fell inside the run
    assert any(node["state"] == "DEAD" for node in report["nodes_at_end"])
    rows = _latest(report["rows"])
    assert len(rows) == 2 * n and all(r["status"] == "ok" for r in rows.values()), \
        [r["error"] for r in rows.values() if r["status"] != "ok"]


def test_a_second_trigger_during_the_run_does_not_double_the_work(report):
    assert report["first_state_at_second_trigger"] == "RUNNING"
    # The deployment's concurrency limit held the second run until the first ended; it then found nothing to do.
    assert report["second"]["start"] >= report["first"]["end"] - 1
    assert {r["run_id"] for r in report["rows"]} == {report["rows"][0]["run_id"]}  # only the first run wrote rows


def test_a_gcs_address_driver_on_a_host_without_a_raylet_is_refused_in_one_line(report):
    """What the old docs told flow runs to do. Plain ray.init aborts the interpreter there; `run` refuses first."""
    raw, refused = report["raw_gcs_driver"], report["gcs_driver"]
    assert raw["rc"] != 0 and not raw["joined"] and raw["aborted"], raw  # the crash the check prevents
    assert refused["rc"] == 2 and not refused["aborted"], refused  # the CLI's start-up refusal, not an abort
    assert refused["wall_s"] < raw["wall_s"]  # before any work: no 10 s wait for a raylet that is not there
    assert len(refused["errors"]) == 1 and "GCS address" in refused["errors"][0]
    assert f"http://{report['hosts']['head']}:8265" in refused["errors"][0]  # it says what to use instead


def test_a_submission_without_the_token_is_refused(report):
    tokenless = report["tokenless"]
    assert tokenless["http"] == 401
    assert tokenless["rc"] == 2 and len(tokenless["errors"]) == 1 and "RAY_AUTH_TOKEN" in tokenless["errors"][0]


def test_a_cancelled_flow_run_stops_its_ray_job(report):
    assert report["cancel_job_before"]["status"] == "RUNNING"
    assert report["cancelled"]["state"] == "CANCELLED"
    assert report["cancel_job_after"]["status"] == "STOPPED", report["cancel_job_after"]
    assert report["cancel_to_stopped_s"] < 90


def test_two_runs_for_one_output_from_two_hosts_exactly_one_works(report):
    race = report["race"]
    assert abs(race["started"]["worker"] - race["started"]["operator"]) < 0.1
    runs = race["runs"]
    winners = [name for name, r in runs.items() if r["rc"] == 0]
    assert len(winners) == 1, runs
    loser = runs[next(name for name in runs if name not in winners)]
    assert loser["rc"] != 0 and len(loser["errors"]) == 1 and "is being processed by live run" in loser["errors"][0], loser
    rows = _latest(report["race_rows"])
    assert len(rows) == 2 * 3 and all(r["status"] == "ok" for r in rows.values())
    assert len({r["run_id"] for r in report["race_rows"]}) == 1  # one run wrote every row
