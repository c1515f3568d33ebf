"""Which way a process uses Ray, decided from RAY_ADDRESS before any work (tight_pipeline/pipeline/cluster.py,
submit.py). The submission itself, across hosts with token auth, runs in the topology drill (tests/test_topology.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from tight_pipeline.pipeline import cluster, submit
from tight_pipeline.pipeline.config import JobConfig


@pytest.mark.parametrize("address, mode", [("", "embedded"), ("http://head:8265", "submit"),
                                           ("https://ray.example.com", "submit"), ("head:6379", "driver")])
def test_the_mode_follows_ray_address(monkeypatch, address, mode):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert cluster.ray_mode() == mode


def test_inside_a_ray_job_the_process_is_a_driver_whatever_the_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert cluster.ray_mode() == "driver"
    cluster.check_ray_address()  # the job's own driver is on the head: nothing to refuse


def test_a_gcs_address_on_a_host_without_a_raylet_is_refused_in_one_line_not_a_crash():
    """What the old docs told a Prefect worker to do; plain ray.init there aborts the interpreter after 10 s. Run in
    a fresh interpreter the way `run` starts. Another test's local Ray may still run on this machine: it is no node of
    the cluster at 10.0.0.7 (test below)."""
    code = ("from tight_pipeline.pipeline.submit import check_cluster\n"
            "from tight_pipeline.pipeline.cluster import ClusterError\n"
            "try:\n    check_cluster()\nexcept ClusterError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"RAY_ADDRESS": "10.0.0.7:6379", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]  # an ordinary error, not an aborted interpreter
    lines = [line for line in proc.stdout.splitlines() if line.startswith("refused:")]
    assert len(lines) == 1 and "GCS address" in lines[0] and "http://10.0.0.7:8265" in lines[0], proc.stdout


def test_a_raylet_of_another_cluster_on_this_host_is_no_node_of_the_cluster_asked_for(tmp_path, monkeypatch):
    """Measured in CI: a test's embedded Ray left a raylet whose socket the drill's worker host could open; taken for a
    node of the drill's cluster, the driver then hung joining it. Only a raylet of the cluster at RAY_ADDRESS counts."""
    import socket
    import time

    sock = tmp_path / "raylet.sock"
    server = ("import socket, sys, time\n"
              "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[2].split('=', 1)[1]); s.listen(4)\n"
              "time.sleep(60)\n")
    # a process that looks like Ray's raylet (its name and flags), listening on its socket
    fake = subprocess.Popen(["bash", "-c", f'exec -a raylet {sys.executable} -c "$0" "$@"', server,
                             "--gcs-address=127.0.0.1:46379", f"--raylet_socket_name={sock}"])
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(sock))
        probe.close()
        assert str(sock) in cluster.local_raylet_sockets("127.0.0.1:46379")
        assert str(sock) in cluster.local_raylet_sockets("localhost:46379")  # the same GCS by another name
        assert str(sock) not in cluster.local_raylet_sockets("127.0.0.1:46380")
        assert str(sock) not in cluster.local_raylet_sockets("10.0.0.7:46379")
        monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:46380")
        with pytest.raises(cluster.ClusterError, match="GCS address"):
            cluster.check_ray_address()
    finally:
        fake.kill()
        fake.wait()


def test_ray_client_addresses_are_refused_naming_both_ways_that_work(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(cluster.ClusterError, match=r"Ray Client.*http://head:8265.*GCS address"):
        cluster.check_ray_address()


def test_an_unreachable_job_api_is_one_line_before_any_work(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(cluster.ClusterError, match=r"cannot reach Ray's job API at http://127.0.0.1:9") as info:
        submit.check_cluster()
    assert "\n" not in str(info.value)


def test_the_config_travels_as_data_and_a_newer_field_is_named():
    config = JobConfig(manifest="s3://b/m.jsonl", output="s3://b/out", preset="balanced", actors=4,
                       gpus_per_actor=1.0).with_run_id()
    text = submit.config_to_json(config)
    assert submit.config_from_json(text) == config
    assert "AWS_" not in text and "TOKEN" not in text.upper()  # no credential rides in the payload
    data = dataclasses.asdict(config) | {"new_knob": 1}
    import json

    with pytest.raises(ValueError, match="new_knob.*versions differ"):
        submit.config_from_json(json.dumps(data))
    assert submit.submission_id(config) == f"tight-pipeline-{config.run_id}"
