"""The run lease of an output (tight_pipeline/pipeline/lease.py) on compare-and-swap (data/conditional.py): one
winner among racing runs, a stalled holder that was taken over stops, release never deletes another's claim, expiry
by the store's clock. Each behaviour on a local path and on the real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tight_pipeline.data import conditional
from tight_pipeline.pipeline.lease import RunLease, RunLeaseHeld, RunLeaseLost, lease_url

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["file", "s3"])
def output(request, tmp_path):
    if request.param == "file":
        return str(tmp_path / "out")
    s3 = request.getfixturevalue("s3")
    bucket = "lease-tests"
    fs = s3.filesystem()
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return f"s3://{bucket}/{uuid.uuid4().hex[:8]}/out"


def _plant(output: str, age_s: float = 0.0, **fields) -> None:
    """A claim by another run, written ``age_s`` ago (local paths: its mtime moved back; the store's clock is the
    file system's)."""
    claim = {"run_id": "run-a", "host": "another-host", "pid": 1, "started": time.time(), "renewals": 0, "ttl_s": 60.0,
             **fields}
    url = lease_url(output)
    existing = conditional.read(url)
    if existing is None:
        conditional.create(url, json.dumps(claim).encode())
    else:
        conditional.replace(url, json.dumps(claim).encode(), existing.etag)
    if age_s:
        os.utime(url, (time.time() - age_s, time.time() - age_s))


def _holder(output: str) -> str | None:
    version = conditional.read(lease_url(output))
    return None if version is None else json.loads(version.data)["run_id"]


def test_a_second_run_on_a_live_output_refuses_in_one_line_naming_the_live_run(output):
    with RunLease(output, "run-a"):
        with pytest.raises(RunLeaseHeld) as caught:
            RunLease(output, "run-b").acquire()
        message = str(caught.value)
        assert "\n" not in message and "run run-a" in message and f"host {socket.gethostname()}" in message
        assert RunLease(output, "run-a").live_holder() is None  # the holder itself may go on
    with RunLease(output, "run-b"):  # released at the end: the next run takes it
        assert _holder(output) == "run-b"
    assert _holder(output) is None


def test_a_crashed_run_s_claim_expires_by_the_store_s_clock_and_a_dead_local_pid_at_once(tmp_path):
    out = str(tmp_path / "out")
    # The claim's own timestamps say nothing about expiry: its age on the store does.
    _plant(out, age_s=30, ttl_s=60, started=0)
    with pytest.raises(RunLeaseHeld, match="renewed 30 s ago"):
        RunLease(out, "run-b").acquire()
    _plant(out, age_s=61, ttl_s=60)
    RunLease(out, "run-b").acquire().release()
    dead = subprocess.Popen(["true"])
    dead.wait()
    _plant(out, host=socket.gethostname(), pid=dead.pid)  # on this host, its process gone: taken at once
    RunLease(out, "run-c").acquire().release()


def test_a_waiting_run_goes_ahead_when_the_live_one_ends_and_renewals_keep_a_long_run_alive(output):
    first = RunLease(output, "run-a", ttl_s=1.5).acquire()
    time.sleep(2.5)  # longer than its ttl: only the renewals (every ttl/3) keep it
    with pytest.raises(RunLeaseHeld):
        RunLease(output, "run-b").acquire()
    assert first.renewals >= 3 and not first.lost.is_set()
    threading.Timer(1.0, first.release).start()
    t0 = time.time()
    second = RunLease(output, "run-b", wait_s=30).acquire()
    assert 0.5 < time.time() - t0 < 15
    second.release()


def test_a_stalled_holder_taken_over_stops_at_its_next_renewal_and_its_release_leaves_the_successor(output):
    stalled = RunLease(output, "run-a", ttl_s=1.0).acquire()
    stalled._stop.set()  # a driver frozen past its ttl (GC pause, lost network): no renewals
    stalled._thread.join()
    time.sleep(2.2)  # the store's clock has whole seconds
    successor = RunLease(output, "run-b", ttl_s=60).acquire()  # taken over: If-Match on the stale claim's etag
    assert _holder(output) == "run-b"
    assert stalled.renew() is False and stalled.lost.is_set()
    with pytest.raises(RunLeaseLost) as caught:
        stalled.check()
    assert "\n" not in str(caught.value) and "run run-b" in str(caught.value) and "lost its lease" in str(caught.value)
    stalled.release()
    assert _holder(output) == "run-b"  # never deletes another's claim
    # A holder that does not know it lost (no renewal since) cannot delete the successor's claim either.
    unaware = RunLease(output, "run-a")
    unaware.etag = stalled.etag
    unaware.release()
    assert _holder(output) == "run-b"
    successor.release()
    assert _holder(output) is None


def test_conditional_writes_refuse_a_second_create_and_a_stale_replace(output):
    url = output + "/k.json"
    etag = conditional.create(url, b"one")
    with pytest.raises(conditional.PreconditionFailed):
        conditional.create(url, b"two")
    new = conditional.replace(url, b"three", etag)
    with pytest.raises(conditional.PreconditionFailed):
        conditional.replace(url, b"four", etag)
    with pytest.raises(conditional.PreconditionFailed):
        conditional.delete(url, etag)
    assert conditional.read(url).data == b"three"
    conditional.delete(url, new)
    assert conditional.read(url) is None


def test_a_store_without_conditional_writes_is_named_not_raced():
    with pytest.raises(conditional.NoConditionalWrites, match=r"memory:// store has no conditional writes"):
        RunLease("memory://bucket/out", "run-a").acquire()


def test_a_double_grant_by_the_store_is_caught_by_reading_the_claim_back(s3, monkeypatch):
    """The drill once saw two racers' conditional creates both succeed on SeaweedFS (1 round of 20). Here the
    other writer's claim lands while this one settles, as a store that double-grants would leave it: this run
    must see that its claim is not the one kept, and refuse, naming the other."""
    import types

    from tight_pipeline.data import storage
    from tight_pipeline.pipeline import lease as lease_module

    fs = s3.filesystem()
    if not fs.exists("lease-race"):
        fs.mkdir("lease-race")
    out = f"s3://lease-race/{uuid.uuid4().hex[:8]}/out"
    other = json.dumps({"run_id": "run-b", "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                        "renewals": 0, "ttl_s": 120.0}).encode()

    def settle(seconds):  # meanwhile the other create "succeeded" too, and landed last
        storage.write_bytes_atomic(lease_url(out), other)

    monkeypatch.setattr(lease_module, "time", types.SimpleNamespace(sleep=settle, monotonic=time.monotonic,
                                                                    time=time.time))
    with pytest.raises(RunLeaseHeld, match="run run-b"):
        RunLease(out, "run-a").acquire()
    assert conditional.read(lease_url(out)).data == other  # the kept claim is left alone


RACER = """
import json, sys, time
from tight_pipeline.pipeline.lease import RunLease, RunLeaseHeld
base, me, t0, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
from tight_pipeline.data import conditional
conditional.read(f"{base}/warm-up")  # the S3 client made before the race, not in it
held = []
for r in range(rounds):
    time.sleep(max(0.0, t0 + r * 2.5 - time.time()))  # SeaweedFS answers some losers' 412 after 1-2 s
    lease = RunLease(f"{base}/round-{r:02d}", f"{me}-r{r}")
    started = time.time()
    try:
        held.append(lease.acquire())
        won = True
    except RunLeaseHeld:
        won = False
    print(json.dumps({"round": r, "racer": me, "won": won, "at": started}), flush=True)
for lease in held:
    lease.release()
"""


@pytest.mark.drill
def test_eight_processes_racing_for_one_output_on_s3_have_exactly_one_winner_every_round(s3):
    fs = s3.filesystem()
    if not fs.exists("lease-race"):
        fs.mkdir("lease-race")
    base, rounds = f"s3://lease-race/{uuid.uuid4().hex[:8]}", 20
    t0 = time.time() + 20  # every racer imported and waiting before the first round
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, base, f"racer{i}", str(t0), str(rounds)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(results) == 8 * rounds
    spreads = []
    for r in range(rounds):
        this = [x for x in results if x["round"] == r]
        assert sum(x["won"] for x in this) == 1, this
        spreads.append(max(x["at"] for x in this) - min(x["at"] for x in this))
    # They really raced: the 8 attempts of a round started within 100 ms in most rounds. On 2 cores with 8
    # processes a round now and then has a late waker (CI saw one start 1.5 s late, its previous round's answer
    # having come late), so the bound on every round is the round's own slot (2.5 s), and 15 of 20 within 1 s.
    assert sorted(spreads)[rounds // 2] < 0.1, spreads
    assert sum(s < 1.0 for s in spreads) >= 15 and max(spreads) < 2.5, spreads
