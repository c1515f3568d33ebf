"""The run lease of an output (tight_pipeline/pipeline/lease.py): a second live run refuses or waits; dead claims expire."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest

from tight_pipeline.pipeline.lease import RunLease, RunLeaseHeld, lease_url


def _claim(output, **fields):
    from tight_pipeline.data import storage

    claim = {"run_id": "run-a", "host": "another-host", "pid": 1, "started": time.time(), "renewed": time.time(),
             "ttl_s": 120.0, **fields}
    storage.write_bytes_atomic(lease_url(str(output)), json.dumps(claim).encode())


def test_a_second_run_on_a_live_output_refuses_in_one_line_naming_the_live_run(tmp_path):
    out = str(tmp_path / "out")
    with RunLease(out, "run-a", settle_s=0):
        with pytest.raises(RunLeaseHeld) as caught:
            RunLease(out, "run-b", settle_s=0).acquire()
        message = str(caught.value)
        assert "\n" not in message and "run run-a" in message and f"host {socket.gethostname()}" in message
        assert RunLease(out, "run-a", settle_s=0).live_holder() is None  # the holder itself may go on
    # Released at the end: the next run takes it.
    with RunLease(out, "run-b", settle_s=0):
        assert json.loads((tmp_path / "out" / "scores" / "_lease.json").read_text())["run_id"] == "run-b"
    assert not (tmp_path / "out" / "scores" / "_lease.json").exists()


def test_a_crashed_run_s_claim_expires_by_itself(tmp_path):
    out = tmp_path / "out"
    # On another host: after ttl_s without a renewal.
    _claim(out, renewed=time.time() - 30, ttl_s=60)
    with pytest.raises(RunLeaseHeld, match="renewed 30 s ago"):
        RunLease(str(out), "run-b", settle_s=0).acquire()
    _claim(out, renewed=time.time() - 61, ttl_s=60)
    RunLease(str(out), "run-b", settle_s=0).acquire().release()
    # On this host: at once, when its process is gone (a killed driver's re-run must not wait).
    dead = subprocess.Popen(["true"])
    dead.wait()
    _claim(out, host=socket.gethostname(), pid=dead.pid)
    RunLease(str(out), "run-c", settle_s=0).acquire().release()


def test_a_waiting_run_goes_ahead_when_the_live_one_ends_and_renewals_keep_a_long_run_alive(tmp_path):
    out = str(tmp_path / "out")
    first = RunLease(out, "run-a", ttl_s=0.9, settle_s=0).acquire()
    time.sleep(1.5)  # longer than its ttl: only the renewals (every ttl/3) keep it
    with pytest.raises(RunLeaseHeld):
        RunLease(out, "run-b", settle_s=0).acquire()
    threading.Timer(1.0, first.release).start()
    t0 = time.time()
    second = RunLease(out, "run-b", wait_s=30, settle_s=0).acquire()
    assert 0.5 < time.time() - t0 < 15
    second.release()
