"""Drive a Ray cluster from a host that is not one of its nodes: the run goes to the cluster as a Ray Job.

    RAY_ADDRESS=http://tight-pipeline-head-svc.ray.svc:8265        # the job API (Ray's own convention)
    result = submit_job(config, progress=..., log_line=...)       # a JobResult, as run_job returns it

A driver needs a raylet on its own host (measured: joining by the GCS address from elsewhere aborts the process,
``docs/deploy.md``), so a Prefect worker pod or a laptop never joins the cluster: it submits
``tight-pipeline run-job --config '<JobConfig as JSON>'`` with ``JobSubmissionClient`` (the token from
``RAY_AUTH_TOKEN`` when the cluster asks for one), and the job's driver runs on the head, as in a KubeRay RayJob.
The config travels as data (never re-derived there; no credential is in it or in the runtime env: the head has its
own). The submitter follows the job: its log lines into ``log_line``, its progress lines into ``progress``, its
end into the result or one error; when the follower is stopped (a cancelled or timed-out flow run, Ctrl-C) it stops
the Ray job. The job writes its result to ``<output>/runs/<run_id>/job_result.json``, read back here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import queue
import re
import shlex
import signal
import threading
import time
from typing import Callable

from tight_pipeline.data import storage
from tight_pipeline.method.presets import load_preset
from tight_pipeline.method.specs import ModelSpec
from tight_pipeline.pipeline.cluster import SUBMIT_ENV, ClusterError, check_ray_address, job_api_address, ray_mode
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.job import JobResult
from tight_pipeline.pipeline.planner import Plan

log = logging.getLogger("tight_pipeline.pipeline.submit")

PROGRESS = re.compile(r"^tight-pipeline progress: (\d+)/(\d+) items$")
ENTRYPOINT = "tight-pipeline run-job --config"
POLL_S = 2.0


class RemoteJobFailed(RuntimeError):
    """The Ray job ended without a result (failed, or stopped by someone else); the message has its last error."""


def submission_id(config: JobConfig) -> str:
    return f"tight-pipeline-{config.run_id}"


def result_url(config: JobConfig) -> str:
    return storage.join(config.output, "runs", config.run_id, "job_result.json")


# -- the config and the result as data ------------------------------------------------------------------------
def config_to_json(config: JobConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(text: str) -> JobConfig:
    data = json.loads(text)
    fields = {f.name: f for f in dataclasses.fields(JobConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"job config has fields this version does not know: {', '.join(unknown)} (the submitter's "
                         "and the cluster image's tight-pipeline versions differ)")
    return JobConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


_PLAN_FIELDS = ("manifest_digest", "items", "invalid_rows", "todo_items", "candidate_items", "candidate_rows",
                "changed_items", "changed_edits", "changed_sample", "kept_rows", "by_preset", "invalid_sample", "plan_s")


def result_to_json(result: JobResult) -> str:
    return json.dumps({
        "config": dataclasses.asdict(result.config), "preset": result.preset.name,
        "presets": {name: p.hash for name, p in result.presets.items()}, "model": result.model.to_dict(),
        "model_digest": result.model_digest, "plan": {k: getattr(result.plan, k) for k in _PLAN_FIELDS},
        "processed_items": result.processed_items, "skipped_items": result.skipped_items, "wall_s": result.wall_s,
        "scores_uri": result.scores_uri, "counts": result.counts})


def result_from_json(text: str) -> JobResult:
    data = json.loads(text)
    config = config_from_json(json.dumps(data["config"]))
    presets = {}
    for name, digest in data["presets"].items():
        preset = load_preset(name)
        if preset.hash != digest:
            raise RemoteJobFailed(f"preset {name} is {digest} on the cluster but {preset.hash} here: the submitter's "
                                  "and the cluster image's tight-pipeline versions differ")
        presets[name] = preset
    plan = Plan(**data["plan"], presets=presets)
    return JobResult(config, presets.get(data["preset"]) or load_preset(data["preset"]), presets,
                     ModelSpec(**data["model"]), data["model_digest"], plan, data["processed_items"],
                     data["skipped_items"], data["wall_s"], data["scores_uri"], dict(data["counts"]))


# -- submit and follow ----------------------------------------------------------------------------------------
MOUNTED_TOKEN = "/var/run/secrets/ray/auth_token"  # where the Kubernetes pool's pods get the Ray token Secret


def client(address: str | None = None):
    """Ray's job client for ``address``, presenting the Ray token when there is one: RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, the Secret the Kubernetes work pool mounts (MOUNTED_TOKEN), or ~/.ray/auth_token."""
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH") and os.path.isfile(MOUNTED_TOKEN):
        os.environ["RAY_AUTH_TOKEN_PATH"] = MOUNTED_TOKEN
    if "RAY_AUTH_MODE" not in os.environ:
        # A token is there but the mode is unset: Ray reads the mode once, when it is imported, so setting the
        # variable now would not reach this process's client. Ray's own switch refreshes it (what `ray.init` does).
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    from ray.job_submission import JobSubmissionClient

    address = address or job_api_address()
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, or a 401/403 from a cluster with token auth
        raise ClusterError(f"cannot reach Ray's job API at {address}: {storage.redact(str(exc)).splitlines()[0][:300]}"
                           " (check RAY_ADDRESS, and RAY_AUTH_TOKEN when the cluster uses token auth)") from None


def check_cluster() -> None:
    """Before any work: refuse a ``RAY_ADDRESS`` this process cannot use (``cluster.check_ray_address``), and in
    submission mode reach the job API once, so a wrong address or a missing token is one line, not a failed run."""
    check_ray_address()
    if ray_mode() == "submit":
        client()


def submit_job(config: JobConfig, progress: Callable[[int, int], None] | None = None,
               log_line: Callable[[str], None] | None = None, address: str | None = None,
               metadata: dict | None = None) -> JobResult:
    """Submit the run as a Ray Job, follow it to its end, return its result (``run_job``'s, from the store)."""
    from ray.job_submission import JobStatus

    config = config.with_run_id()
    address = address or job_api_address()
    jobs = client(address)
    sid = submission_id(config)
    runtime_env = {"env_vars": {k: os.environ[k] for k in SUBMIT_ENV if k in os.environ}}
    jobs.submit_job(entrypoint=f"{ENTRYPOINT} {shlex.quote(config_to_json(config))}", submission_id=sid,
                    runtime_env=runtime_env if runtime_env["env_vars"] else None,
                    metadata={"run_id": config.run_id, "output": storage.redact(config.output), **(metadata or {})})
    say = log_line or (lambda line: log.info("%s", line))
    say(f"submitted Ray job {sid} to {address}")
    follower = _LogFollower(jobs, sid)
    status = None
    try:
        last_error = ""
        while True:
            for line in follower.lines():
                match = PROGRESS.match(line.strip())
                if match:
                    if progress:
                        progress(int(match.group(1)), int(match.group(2)))
                    continue
                if line.startswith("error:"):
                    last_error = line
                say(line)
            status = jobs.get_job_status(sid)
            if status.is_terminal():
                follower.finish()
                for line in follower.lines():
                    if line.startswith("error:"):
                        last_error = line
                    if not PROGRESS.match(line.strip()):
                        say(line)
                break
            time.sleep(POLL_S)
    except BaseException:
        # The flow run was cancelled or timed out (Prefect raises into this thread), or Ctrl-C: the job goes too.
        follower.stop()
        if status is None or not status.is_terminal():
            with _signals_held():  # a second SIGTERM (a supervisor's, a shell's) must not cut the stop short
                try:
                    jobs.stop_job(sid)
                    say(f"stopped Ray job {sid} (its submitter was stopped)")
                except Exception as exc:  # noqa: BLE001 - the original error matters more; say why it is not
                    say(f"could not stop Ray job {sid}: {storage.redact(str(exc))[:200]}")
        raise
    if status != JobStatus.SUCCEEDED:
        info = jobs.get_job_info(sid)
        why = last_error.removeprefix("error:").strip() or ((info.message or "").strip().splitlines() or [""])[-1]
        raise RemoteJobFailed(f"Ray job {sid} {status.value.lower()}: {storage.redact(why)[:500] or 'see its logs'}")
    return result_from_json(storage.read_bytes(result_url(config)).decode())


@contextlib.contextmanager
def _signals_held():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class _LogFollower:
    """The job's log lines as they come (Ray's log tail over a websocket, in a thread), polled by the caller;
    falls back to re-reading the whole log when the tail cannot be opened."""

    def __init__(self, jobs, sid: str):
        self.jobs, self.sid = jobs, sid
        self.queue: queue.Queue[str] = queue.Queue()
        self._partial = ""
        self._seen = 0  # characters consumed by the fallback
        self._failed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"tail-{sid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        async def tail():
            async for chunk in self.jobs.tail_job_logs(self.sid):
                self.queue.put(chunk)

        try:
            self._loop.run_until_complete(tail())
        except BaseException:  # noqa: BLE001 - cancelled by stop(), or the tail failed: the fallback polls
            self._failed = True
        finally:
            self._loop.close()

    def lines(self) -> list[str]:
        chunks = []
        while True:
            try:
                chunks.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if self._failed and not chunks:
            text = self.jobs.get_job_logs(self.sid)
            chunks, self._seen = [text[self._seen:]], len(text)
        else:
            self._seen += sum(len(c) for c in chunks)
        text = self._partial + "".join(chunks)
        *whole, self._partial = text.split("\n")
        return [line for line in whole if line.strip()]

    def finish(self) -> None:
        self._thread.join(timeout=10)
        if self._partial:
            self.queue.put("\n")

    def stop(self) -> None:
        if self._thread.is_alive() and not self._loop.is_closed():
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)


def run_anywhere(config: JobConfig, progress: Callable[[int, int], None] | None = None,
                 log_line: Callable[[str], None] | None = None, metadata: dict | None = None,
                 on_plan: Callable | None = None) -> JobResult:
    """``run_job`` here (embedded Ray, or a driver on a Ray node), or ``submit_job`` when ``RAY_ADDRESS`` is the job
    API: what every flow and ``run`` call, so a scale-out is configuration. ``on_plan(plan)``: here, called with the
    run's plan before Ray starts; submitted, the job's own plan lines come through ``log_line``."""
    from tight_pipeline.pipeline.job import run_job

    if ray_mode() == "submit":
        return submit_job(config, progress=progress, log_line=log_line, metadata=metadata)
    return run_job(config, progress=progress, on_plan=on_plan)
