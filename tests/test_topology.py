"""The production topology in miniature (infra/local/topology.py), run in a private network namespace: Prefect
server + process worker, a GPU-less Ray head + GPU nodes that join later, SeaweedFS, MLflow; deploy, trigger, kill a
GPU node mid-run, trigger again, submit a Ray Job. This test asserts on what the drill saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.drill


def _latest(rows: list[dict]) -> dict:
    latest: dict = {}
    for r in sorted(rows, key=lambda r: r["finished_at"]):
        latest[(r["preset_hash"], r["item_id"], r["edit_id"])] = r
    return latest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.fail("the topology drill needs a private network namespace (unshare -n: root, as CI is)")
    work = tmp_path_factory.mktemp("topology")
    out = work / "report.json"
    script = (f"ip link set lo up && exec {sys.executable} {ROOT / 'infra/local/topology.py'} "
              f"--workdir {work / 'run'} --report {out}")
    proc = subprocess.run(["unshare", "-n", "--", "bash", "-c", script], capture_output=True, text=True,
                          timeout=1500, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["ok"], data.get("error", "") + "\n" + proc.stdout[-3000:]
    return data


def test_the_worker_ran_the_deployment_from_prefect_yaml_on_the_ray_cluster(report):
    first, second = report["first"], report["second"]
    assert first["state"] == "COMPLETED" and second["state"] == "COMPLETED", (first, second)
    for run in (first, second):
        assert run["work_pool"] == "drill-pool" and run["infrastructure_pid"]  # a process worker of the pool ran it
    rows = _latest(report["rows"])
    gpu_nodes = {n["node_id"] for n in report["nodes_at_start"] + report["nodes_at_end"] if n["gpus"] > 0}
    head = {n["node_id"] for n in report["nodes_at_end"] if n["is_head"]}
    # The flow reached the cluster through RAY_ADDRESS: every row was made on one of the cluster's GPU nodes.
    assert {r["node_id"] for r in rows.values()} <= gpu_nodes and not ({r["node_id"] for r in rows.values()} & head)
    # MLflow holds the run, linked to its Prefect flow run.
    finished = {r["prefect_flow_run_id"] for r in report["mlflow_runs"] if r["status"] == "FINISHED"}
    assert report["first_run"] in finished and report["second_run"] in finished


def test_actors_waited_for_the_gpu_nodes_then_ran_one_per_gpu_node(report):
    assert report["pngs_before_gpus"] == 0  # nothing ran while the cluster had no GPU node
    per_node = defaultdict(set)
    for r in report["rows"]:
        assert r["gpu_ids"] == "0", r  # each actor was given its node's one GPU
        per_node[r["node_id"]].add(r["worker"])
    assert len(per_node) >= 2  # both GPU nodes worked
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


def test_the_same_job_submitted_as_a_ray_job_completes(report):
    job = report["ray_job"]
    assert job["rc"] == 0, job["out"][-2000:] + job["err"]
    rows = _latest(report["job_rows"])
    assert len(rows) == 2 * report["items"] and all(r["status"] == "ok" for r in rows.values())
    assert all(r["gpu_ids"] == "0" for r in rows.values())
