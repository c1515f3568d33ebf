"""The run lease of an output: two live runs on one output never process the same items.

    with RunLease(output, run_id) as lease:   # refuses (RunLeaseHeld, one line naming the live run) or waits wait_s
        ...
        lease.check()                         # raises RunLeaseLost once another run took the output over

The lease is one small JSON object, ``<output>/scores/_lease.json`` (run id, host, pid, when it started, how many
times it was renewed), changed only by compare-and-swap on the store (``data/conditional.py``):

- **take**: create it with ``If-None-Match: *``; of any number of runs that start together exactly one creates it,
  the others get 412 and stop (or wait) naming the winner;
- **renew**: every ``ttl_s / 3`` replace it with ``If-Match: <the etag this run wrote last>``; a 412 means another
  run took it over (this run's renewals stalled for ``ttl_s``): the lease is *lost*, the run stops scheduling work
  and ends in one error line (``check``);
- **take over** a claim whose renewals stopped ``ttl_s`` ago — judged by the store's own clock (the object's age),
  never by comparing two hosts' clocks — or, at once, one held by a process of this host that no longer exists:
  replace it with ``If-Match`` on the etag that was read, so two takers cannot both win;
- **release**: delete it with ``If-Match`` on this run's etag: a successor's claim is never deleted.

Stores without conditional writes are refused by name (``conditional.NoConditionalWrites``), never raced.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone

from tight_pipeline.data import conditional, storage
from tight_pipeline.data.conditional import PreconditionFailed

NAME = "_lease.json"
# After a winning write to an object store, the claim is read back this long after (``RunLease._confirm``); local
# files need none (an exclusive link is atomic in the kernel).
CONFIRM_S = 1.0  # SeaweedFS answers some racing writes 1-2 s late
log = logging.getLogger("tight_pipeline.pipeline.lease")


class RunLeaseHeld(RuntimeError):
    """Another live run holds the output (the message names it)."""


class RunLeaseLost(RuntimeError):
    """Another run took this run's output over while it ran (its renewals stalled for ttl_s)."""


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
    except (PermissionError, ValueError, KeyError, TypeError):
        return False
    return False


class RunLease:
    """Hold the output's lease for the life of a run (a context manager; ``describe`` names a holder)."""

    def __init__(self, output: str, run_id: str, ttl_s: float = 120.0, wait_s: float = 0.0):
        self.url, self.output, self.run_id = lease_url(output), output, run_id
        self.ttl_s, self.wait_s = ttl_s, wait_s
        self.started = time.time()
        self.renewals = 0
        self.etag: str | None = None
        self.lost = threading.Event()
        self.lost_reason = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _claim(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": self.started, "renewals": self.renewals, "ttl_s": self.ttl_s}).encode()

    @staticmethod
    def _parse(version: conditional.Versioned) -> dict:
        try:
            holder = json.loads(version.data)
        except ValueError:
            holder = {}
        return {**(holder if isinstance(holder, dict) else {}), "age_s": version.age_s}

    def _stale(self, holder: dict) -> bool:
        return holder["age_s"] > float(holder.get("ttl_s") or self.ttl_s) or _pid_gone(holder)

    def live_holder(self) -> dict | None:
        """The holder of the lease when it is another run that is still alive, else None."""
        version = conditional.read(self.url)
        if version is None:
            return None
        holder = self._parse(version)
        if holder.get("run_id") == self.run_id or self._stale(holder):
            return None
        return holder

    @staticmethod
    def describe(holder: dict) -> str:
        return (f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, started "
                f"{_stamp(float(holder.get('started') or 0))}, renewed {holder.get('age_s', 0):.0f} s ago)")

    def _try_take(self) -> dict | None:
        """Take the lease if it is free or stale; the live holder otherwise (None = taken)."""
        version = conditional.read(self.url)
        try:
            if version is None:
                claim = self._claim()
                self.etag = conditional.create(self.url, claim)
                return self._confirm(claim)
            holder = self._parse(version)
            if holder.get("run_id") == self.run_id or self._stale(holder):
                if holder.get("run_id") != self.run_id:
                    log.info("taking over %s's lease on %s: %s", holder.get("run_id"), storage.redact(self.output),
                             "its process is gone" if _pid_gone(holder) else
                             f"not renewed for {holder['age_s']:.0f} s (ttl {holder.get('ttl_s')} s)")
                claim = self._claim()
                self.etag = conditional.replace(self.url, claim, version.etag)
                return self._confirm(claim)
            return holder
        except PreconditionFailed:
            # Another run created or took it between our read and our write: it won; name it.
            return self.live_holder() or {"run_id": "(another run, just now)", "age_s": 0.0}

    def _confirm(self, claim: bytes) -> None:
        """After a winning write, read the claim back once the store has settled (``CONFIRM_S``): the drill once saw
        two racers' creates both succeed on SeaweedFS 4.48 (1 round of 20, 8 processes within 4 ms); whichever
        claim the store kept is the winner, and a writer that reads another's claim lost."""
        if storage.scheme_of(self.url) != "s3":
            return None
        time.sleep(CONFIRM_S)
        version = conditional.read(self.url)
        if version is None or version.data != claim:
            self.etag = None
            raise PreconditionFailed(f"{storage.redact(self.url)}: another writer's claim is the one kept")
        self.etag = version.etag
        return None

    def acquire(self) -> "RunLease":
        deadline = time.monotonic() + self.wait_s
        while True:
            holder = self._try_take()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                waited = f" after waiting {self.wait_s:g} s" if self.wait_s else ""
                raise RunLeaseHeld(f"output {storage.redact(self.output)} is being processed by live "
                                   f"{self.describe(holder)}{waited}; its claim expires "
                                   f"{float(holder.get('ttl_s') or self.ttl_s):g} s after its last renewal if that "
                                   "run died")
            time.sleep(min(5.0, max(0.2, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._renew_loop, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> bool:
        """One renewal (the thread calls it every ttl/3); False once the lease is lost."""
        if self.lost.is_set():
            return False
        self.renewals += 1
        claim = self._claim()
        try:
            self.etag = conditional.replace(self.url, claim, self.etag)
            return True
        except PreconditionFailed:
            version = conditional.read(self.url)
            if version is not None and version.data == claim:  # our own write, its reply lost and retried
                self.etag = version.etag
                return True
            holder = self._parse(version) if version is not None else {}
            self.lost_reason = (f"output {storage.redact(self.output)}: run {self.run_id} lost its lease to "
                                + (self.describe(holder) if holder else "nobody (the claim was deleted)")
                                + f" after its renewals stalled for more than ttl {self.ttl_s:g} s; it stopped "
                                "scheduling work (the rows it wrote stay valid; the other run carries on)")
            self.lost.set()
            log.error(self.lost_reason)
            return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # noqa: BLE001 - a store hiccup: retried at the next tick; expiry needs ttl_s
                self.renewals -= 1
                log.warning("lease renewal on %s failed (retried in %.0f s): %s", storage.redact(self.output),
                            self.ttl_s / 3, storage.redact(str(exc))[:200])

    def check(self) -> None:
        """Raise ``RunLeaseLost`` once another run took the output over."""
        if self.lost.is_set():
            raise RunLeaseLost(self.lost_reason)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.etag is None or self.lost.is_set():
            return
        try:
            conditional.delete(self.url, self.etag)  # only our own version: never a successor's claim
        except PreconditionFailed:
            log.warning("lease on %s was no longer this run's at release; left in place", storage.redact(self.output))
        self.etag = None

    def __enter__(self) -> "RunLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
