"""The run lease of an output: two live runs on one output never process the same items.

    with RunLease(output, run_id):   # refuses (RunLeaseHeld, one line naming the live run) or waits ``wait_s``
        ...                          # a thread renews it every ttl/3 s while the run lives

The lease is one small JSON object, ``<output>/scores/_lease.json``: run id, host, pid, when it started and when it
was last renewed. Another run may take it when its holder released it, when its renewals stopped for ``ttl_s``
(a crashed driver, a lost pod), or at once when the holder was a process on this same host that no longer exists.
Whatever starts the runs (two schedules, a schedule and a person, a Ray Job and a Prefect flow), the second one
sees the first. Object stores have no compare-and-swap here: a taker writes its claim, waits ``settle_s`` and reads
it back, so two runs that start within the same second do not both go ahead (the later writer wins; the other
stops with the same one-line error).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from tight_pipeline.data import storage

NAME = "_lease.json"


class RunLeaseHeld(RuntimeError):
    """Another live run holds the output (the message names it)."""


def lease_url(output: str) -> str:
    return storage.join(output, "scores", NAME)


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _pid_gone(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, KeyError):
        return False
    return False


class RunLease:
    """Hold the output's lease for the life of a run (a context manager; ``describe`` names a holder)."""

    def __init__(self, output: str, run_id: str, ttl_s: float = 120.0, wait_s: float = 0.0, settle_s: float = 1.0):
        self.url, self.output, self.run_id = lease_url(output), output, run_id
        self.ttl_s, self.wait_s, self.settle_s = ttl_s, wait_s, settle_s
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.url))
        except (FileNotFoundError, ValueError):
            return None

    def live_holder(self) -> dict | None:
        """The holder of the lease when it is another run that is still alive, else None."""
        holder = self.read()
        if not holder or holder.get("run_id") == self.run_id:
            return None
        if time.time() - float(holder.get("renewed", 0)) > float(holder.get("ttl_s", self.ttl_s)) or _pid_gone(holder):
            return None
        return holder

    @staticmethod
    def describe(holder: dict) -> str:
        age = time.time() - float(holder.get("renewed", 0))
        return (f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, started "
                f"{_stamp(float(holder.get('started', 0)))}, renewed {age:.0f} s ago)")

    def _write(self) -> None:
        claim = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                 "renewed": time.time(), "ttl_s": self.ttl_s}
        storage.write_bytes_atomic(self.url, json.dumps(claim).encode())

    def acquire(self) -> "RunLease":
        deadline = time.time() + self.wait_s
        while True:
            holder = self.live_holder()
            if holder is None:
                self._write()
                time.sleep(self.settle_s)
                holder = self.live_holder()  # a run that wrote after us won the race
                if holder is None:
                    break
            if time.time() >= deadline:
                waited = f" after waiting {self.wait_s:g} s" if self.wait_s else ""
                raise RunLeaseHeld(f"output {storage.redact(self.output)} is being processed by live {self.describe(holder)}"
                                   f"{waited}; its claim expires {holder.get('ttl_s', self.ttl_s):g} s after its last "
                                   "renewal if that run died")
            time.sleep(min(5.0, max(0.5, deadline - time.time())))
        self._thread = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed renewal is retried at the next tick; expiry needs ttl_s
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        holder = self.read()
        if holder and holder.get("run_id") == self.run_id:
            storage.remove(self.url)

    def __enter__(self) -> "RunLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

