"""Faults: the driver killed mid-run, the S3 server restarted mid-run, and a separately started Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from infra.local.services import RayHead, stop_pids
from tests.corpus import image_files
from tight_pipeline.data import scores
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.job import run_job

pytestmark = pytest.mark.drill  # minutes each: `make drills` (CI runs them after `make test`)

IMAGES = ["good.png", "cmyk.jpg", "gray.png", "palette.png", "rgba.png", "good.jpg"]


def _records(n: int) -> list[dict]:
    return [{"item_id": f"p-{i}", "image_uri": f"img/{IMAGES[i % len(IMAGES)]}", "source_prompt": "a product photo",
             "locales": {"de-DE": "ein Produktfoto", "fr-FR": "une photo de produit"}} for i in range(n)]


def _local_manifest(folder: Path, n: int) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        (folder / "img" / name).write_bytes(image_files()[name])
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records(n)) + "\n")
    return path


def _exactly_once(rows: pd.DataFrame, n_items: int) -> None:
    assert len(rows) == 2 * n_items
    assert not rows.duplicated(["preset_hash", "item_id", "edit_id"]).any()
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()


def test_killed_driver_resumes_with_only_the_missing_rows(tmp_path, tiny_model_dir, ray_session):
    n = 8
    manifest = _local_manifest(tmp_path / "in", n)
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="tpk", dir="/tmp")
    script = (f"from tight_pipeline.pipeline.config import JobConfig; from tight_pipeline.pipeline.job import run_job; run_job(JobConfig(manifest={str(manifest)!r}, "
              f"output={str(out)!r}, preset='draft', model={str(tiny_model_dir)!r}, batch_size=1))")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("AWS_ENDPOINT_URL", None)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "scores").glob("2*/part-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, like a lost machine
    proc.wait()
    stop_pids(RayHead(Path(ray_tmp)).pids(), grace=2)
    checkpointed = scores.read_latest(str(out))
    done_before = set(checkpointed.loc[checkpointed["status"] == "ok", "item_id"])
    assert 2 <= len(done_before) < n

    result = run_job(JobConfig(manifest=str(manifest), output=str(out), preset="draft", model=str(tiny_model_dir)))
    assert result.skipped_items == len(done_before)
    assert result.processed_items == n - len(done_before)
    _exactly_once(result.rows, n)
    _exactly_once(scores.read_latest(str(out)), n)


def _io_windows(row) -> list[tuple[float, float]]:
    """When an item's worker was talking to S3: fetching its image, then writing its PNGs (epoch seconds)."""
    finished = pd.Timestamp(row["finished_at"]).timestamp()
    start = finished - row["time_total_s"]
    return [(start, start + row["time_fetch_s"]), (finished - row["time_write_s"], finished)]


def test_s3_server_restart_mid_run_is_retried(tmp_path, s3, tiny_model_dir, ray_session):
    """The fault is put inside the run by what the run itself shows, never by a guess at timing: six one-item
    batches (one actor), the first two items' reconstructions (written last) time one item's cycle, and the server
    is then kept down for longer than a cycle while four items are still to do, so the worker's I/O must meet the
    outage. The rows' fetch / write windows prove a request met it; the retries must ride it out."""
    fs = s3.filesystem()
    fs.mkdir("restart")
    for name in IMAGES:
        fs.pipe(f"restart/in/img/{name}", image_files()[name])
    n = 6
    fs.pipe("restart/in/manifest.jsonl", ("\n".join(json.dumps(r) for r in _records(n)) + "\n").encode())
    config = JobConfig(manifest="s3://restart/in/manifest.jsonl", output="s3://restart/out", preset="balanced",
                       model=str(tiny_model_dir), batch_size=1)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", run_job(config)))
    thread.start()

    def wait_for_items(k: int) -> float:
        deadline = time.time() + 300
        while time.time() < deadline and thread.is_alive():
            if len(s3.filesystem().glob("restart/out/*/*/reconstruction.png")) >= k:
                return time.time()
            time.sleep(0.2)
        raise AssertionError(f"the run ended or stalled before {k} items were written")

    first, second = wait_for_items(1), wait_for_items(2)
    cycle = second - first
    done_at_stop = len(s3.filesystem().glob("restart/out/*/*/reconstruction.png"))
    down = time.time()
    s3.stop()  # SIGTERM by PID: every request now fails to connect
    time.sleep(1.5 * cycle + 2)  # longer than an item's cycle: the next fetch or write must meet a dead server
    s3.start()  # same port, same data
    up = time.time()
    thread.join(timeout=500)
    assert not thread.is_alive() and "r" in result
    assert done_at_stop <= n - 3  # the outage fell inside the run, with items left on both sides of it
    rows = result["r"].rows
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()  # retried, not failed
    _exactly_once(rows, n)
    met = [r["item_id"] for _, r in rows.iterrows() if any(a < up and b > down for a, b in _io_windows(r))]
    assert met, "no worker request met the outage"
    assert len(s3.filesystem().glob("restart/out/*/*/de-DE.png")) == n


def test_job_runs_on_a_separately_started_ray_cluster(tmp_path, tiny_model_dir):
    manifest = _local_manifest(tmp_path / "in", 2)
    head_tmp = Path(tempfile.mkdtemp(prefix="tph", dir="/tmp"))
    driver_tmp = Path(tempfile.mkdtemp(prefix="tpd", dir="/tmp"))
    with RayHead(head_tmp) as head:
        env = {**os.environ, "RAY_ADDRESS": head.address, "RAY_TMPDIR": str(driver_tmp)}
        env.pop("AWS_ENDPOINT_URL", None)
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--manifest", str(manifest),
                               "--output", str(tmp_path / "out"), "--preset", "draft", "--model", str(tiny_model_dir),
                               "--actor-cpus", "0.5"], env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = scores.read_latest(str(tmp_path / "out"))
        _exactly_once(rows, 2)
        # The work ran on the cluster's workers (their logs are in the head's temp dir) and no embedded
        # Ray was started by the driver.
        pid = rows["worker"].iloc[0].rsplit(":", 1)[1]
        logs = [p.name for p in head_tmp.rglob("*") if p.is_file()]
        assert any(f"_{pid}.log" in name or f"-{pid}." in name for name in logs), pid
        assert not list(driver_tmp.glob("session_*"))
        # Ray Client (ray://) cannot run Ray Data (measured): refused before any work, in one line.
        env["RAY_ADDRESS"] = head.client_address
        refused = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--manifest", str(manifest), "--output",
                                  str(tmp_path / "out2"), "--preset", "draft", "--model", str(tiny_model_dir)],
                                 env=env, capture_output=True, text=True, timeout=400)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.strip().splitlines()[-1].startswith(f"error: RAY_ADDRESS={head.client_address}: Ray "
                                                                  "Data jobs do not run over Ray Client")
        assert not (tmp_path / "out2" / "scores").exists()
        listeners = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        for pid_ in head.pids():
            for line in listeners.splitlines():
                if f"pid={pid_}," in line:
                    assert line.split()[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line
    assert head.pids() == []
