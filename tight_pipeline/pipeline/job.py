"""The Ray Data job: manifest → plan → Tight Inversion in an actor pool → PNGs + Parquet parts, written by workers.

    result = run_job(JobConfig(manifest="s3://bucket/m.jsonl", output="s3://bucket/out", preset="balanced"))
    plan = plan_job(config)            # what --dry-run prints: to do / done before / invalid, per preset

No Prefect or MLflow in here (flows/ and reporting/tracking.py add those). The driver coordinates and never holds the
catalog: it streams the manifest in chunks (``manifest.iter_manifest``), marks each item *to do* or *resume
candidate* by an anti-join of its keys against the ``scores/`` dataset's key columns (``scores.done_keys``), and
writes the plan as Parquet files that Ray Data reads. Workers check the candidates' PNGs (``actor.DoneFilter``),
edit the rest (``actor.EditorActor``) and write the rows themselves; the driver gets one small summary row per
item. Guarantees:
- one current row per (preset, item, edit) of the manifest — status ok / error / invalid, ``error`` naming the
  item and the cause; an invalid manifest row yields one row with ``edit_id = "*row<N>"``; a redone key gets a
  newer row (the latest ``finished_at`` wins: ``scores.read_latest``);
- a failing item never fails its block; an item that kills its worker ends as an error row after
  ``max_attempts`` starts;
- images go to ``<output>/<preset-hash>/<item_id>/<edit_id>.png`` (+ ``reconstruction.png``, ``input.png``);
  a re-run skips items whose rows are ok, were made by the same model (spec and weights, ``model_digest``) and
  whose PNGs exist; a killed driver's re-run redoes only what has no row yet.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tight_pipeline.data import scores, storage
from tight_pipeline.pipeline.actor import SUMMARY_COLUMNS, AttemptLedger, DoneFilter, EditorActor, now
from tight_pipeline.method.specs import ModelSpec, resolve_model_spec
from tight_pipeline.method.fingerprints import WeightsNotFound, model_digest
from tight_pipeline.method.auto.rivals import rival_phrases, run_vocabulary
from tight_pipeline.pipeline.lease import RunLease
from tight_pipeline.data.manifest import InvalidRow, iter_manifest
from tight_pipeline.method.presets import Preset, load_preset, load_presets
from tight_pipeline.data.variants import VariantRequest, load_style_set

log = logging.getLogger("tight_pipeline.pipeline.job")

KEY = scores.KEY


@dataclass(frozen=True)
class JobConfig:
    """Everything a run needs; flat, frozen and loggable.

    Attributes:
        manifest: manifest URL (JSONL / CSV / Parquet; any allowed fsspec scheme).
        output: output prefix URL (folder or bucket prefix).
        preset: default preset name (``name@scale`` allowed); items may override it.
        model: ``--model`` reference (folder with model.yaml, spec YAML, or name); ``None`` = catalog-demo.
        actors: most actors in the pool (one model per actor).
        min_actors: fewest actors; the pool grows from this to ``actors`` as the cluster autoscales
            (0 = ``actors``: a fixed pool).
        actor_cpus: CPUs reserved per actor (fractional is fine; keep the sum below the node's CPUs).
        gpus_per_actor: GPUs per actor; ``None`` = by the model spec's device, never by what the cluster shows at
            one instant (a GPU group that autoscales from zero shows none): ``cuda`` → 1, ``cpu`` → 0, ``auto`` → 1
            when the cluster declares GPUs, else 0.
        actor_wait_s: how long the run waits for its first ``min_actors`` actors to start (nodes to scale up, the
            model to load) before it stops with an error naming the resources it waited for.
        torch_threads: intra-op threads per actor; 0 = the actor's own reserved CPUs (on an embedded Ray: this
            machine's CPUs / actors).
        batch_size: items per ``map_batches`` call, run through the engine as one batch (items of one preset
            and working size share every UNet call); 0 = the model spec's ``max_batch``.
        max_pixels / min_side: image limits (pixel count is checked before decoding).
        item_timeout_s: per-item time limit (0 = none); checked at every model step, the item becomes an error.
        allowed_schemes: URL schemes the manifest and images may use.
        max_attempts: starts of an item before a worker death on it makes it an error row (actor deaths
            included: out of memory, native crashes, lost nodes). Ray restarts actors without end; this bounds it.
        plan_rows: items per plan file (the unit Ray Data reads; the driver streams the manifest in such chunks).
        max_failure_rate: fraction of error/invalid rows above which ``JobResult.failed`` is true.
        clip_model: local CLIP folder for edit scores (optional; never downloaded).
        variants: a variant job: this many styled variants per item (0 = not a variant job; the manifest's
            edits are used). Items may override it (``variants: {n, styles}``).
        styles: the variant job's style set (``configs/variants.yaml``; "" = its default).
        run_id: identifies the run in rows and MLflow; generated when empty.
        lease_wait_s: when another live run holds the output (``lease.RunLease``), wait this long for it, then stop
            with an error naming it (0 = stop at once).
        lease_ttl_s: a run's claim on its output expires this long after its driver stopped renewing it.
        output_size: ``input``: output PNGs at the photo's own size (after EXIF orientation), each edit composited
            by its region (``method/region.py``); ``working``: the model's working-size images as they came out.
    """

    manifest: str
    output: str
    preset: str = "balanced"
    model: str | None = None
    actors: int = 1
    min_actors: int = 0
    actor_cpus: float = 1.0
    gpus_per_actor: float | None = None
    actor_wait_s: float = 900.0
    torch_threads: int = 0
    batch_size: int = 0
    max_pixels: int = 40_000_000
    min_side: int = 32
    item_timeout_s: float = 0.0
    allowed_schemes: tuple[str, ...] = storage.DEFAULT_SCHEMES
    max_attempts: int = 3
    plan_rows: int = 2048
    max_failure_rate: float = 1.0
    clip_model: str | None = None
    variants: int = 0
    styles: str = ""
    run_id: str = ""
    lease_wait_s: float = 0.0
    lease_ttl_s: float = 120.0
    output_size: str = "input"

    def __post_init__(self):
        if self.output_size not in ("input", "working"):
            raise ValueError(f"output_size {self.output_size!r} must be 'input' or 'working'")

    def variant_request(self) -> VariantRequest | None:
        """The variant job's request (``None`` when this is not a variant job); raises ``VariantError``."""
        if self.variants <= 0:
            return None
        return VariantRequest(self.variants, load_style_set(self.styles or None))

    def with_run_id(self) -> "JobConfig":
        if self.run_id:
            return self
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return dataclasses.replace(self, run_id=f"{stamp}-{uuid.uuid4().hex[:6]}")


@dataclass
class Plan:
    """What a run will do, counted while the manifest streams past (nothing per item is kept)."""

    manifest_digest: str = ""
    items: int = 0
    invalid_rows: int = 0
    todo_items: int = 0
    candidate_items: int = 0  # every edit already ok for this model: skipped if the workers find their PNGs
    candidate_rows: int = 0
    kept_rows: int = 0  # ok rows of partly done variant items, left as they are (only their new variants run)
    by_preset: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    invalid_sample: list[str] = field(default_factory=list)  # the first 50 invalid rows' messages
    presets: dict[str, Preset] = field(default_factory=dict)
    plan_s: float = 0.0
    # what the edits of ``auto`` items take out and put in, over the whole manifest (done items too, so a resumed
    # run weighs its edits against the same rivals): automatic strength's landed check (``method/auto/rivals.py``)
    vocabulary: Counter = field(default_factory=Counter)

    @property
    def rivals(self) -> tuple[str, ...]:
        return rival_phrases(self.vocabulary, limit=max([p.auto_max_rivals for p in self.presets.values() if p.auto],
                                                        default=0))

    def count(self, preset: str, what: str, n: int = 1) -> None:
        self.by_preset.setdefault(preset, {"todo": 0, "done_before": 0, "invalid": 0})[what] += n


@dataclass
class JobResult:
    config: JobConfig
    preset: Preset  # the run's default preset
    presets: dict[str, Preset]  # every preset used, by name
    model: ModelSpec
    model_digest: str  # the spec's settings + its weights' fingerprint (Parquet ``model_digest``)
    plan: Plan
    processed_items: int  # items run through the model in this run
    skipped_items: int  # items already done before this run
    wall_s: float
    scores_uri: str  # the scores/ dataset (a prefix)
    counts: dict[str, int] = field(default_factory=dict)  # this manifest's current rows by status
    _rows: pd.DataFrame | None = None

    @property
    def rows(self) -> pd.DataFrame:
        """This manifest's current rows under this run's presets, every column (loads them: for small runs,
        reports and tests)."""
        if self._rows is None:
            self._rows = scores.read_latest(self.config.output, filter=self.manifest_filter())
        return self._rows

    def manifest_filter(self):
        """A pyarrow filter for this manifest's rows under this run's presets."""
        hashes = sorted({p.hash for p in self.presets.values()})
        return (pc.field("manifest_uri") == self.config.manifest) & pc.field("preset_hash").isin(hashes)

    def sample_rows(self, n: int = 200) -> pd.DataFrame:
        """Up to ``n`` current rows of this manifest (contact sheets, galleries), without reading the rest."""
        return scores.head(self.config.output, n, filter=self.manifest_filter())

    def run_rows(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The rows this run wrote (current ones), only ``columns``: what reports read at catalog scale."""
        return scores.read_latest(self.config.output, columns, filter=pc.field("run_id") == self.config.run_id)

    @property
    def n_rows(self) -> int:
        return sum(self.counts.values())

    @property
    def failure_rate(self) -> float:
        n = self.n_rows
        return 0.0 if n == 0 else (n - self.counts.get("ok", 0)) / n

    @property
    def failed(self) -> bool:
        return self.failure_rate > self.config.max_failure_rate


def default_preset(preset: str | None, spec: ModelSpec) -> str:
    """``preset`` or, when not given, the model family's default (``flux-balanced`` for FLUX, else ``balanced``):
    the CLI and the flows (deployments) both choose it here."""
    return preset or ("flux-balanced" if spec.family == "flux" else "balanced")


# -- Ray ----------------------------------------------------------------------------------------------
class ClusterError(RuntimeError):
    """The cluster cannot run the job as configured (no actor started in time, no weights where they run)."""


class ComputeSettingError(ValueError):
    """Pool settings no cluster can satisfy (the message names the setting)."""


def check_compute(config: JobConfig) -> None:
    """Raise ``ComputeSettingError`` naming the setting for pool settings no cluster can satisfy (and
    ``ClusterError`` for a Ray address the job cannot use)."""
    check_ray_address()
    if config.actors < 1:
        raise ComputeSettingError(f"actors must be at least 1 (got {config.actors})")
    if not 0 <= config.min_actors <= config.actors:
        raise ComputeSettingError(f"min_actors must be between 0 and actors={config.actors} (got {config.min_actors})")
    if config.actor_cpus <= 0:
        raise ComputeSettingError(f"actor_cpus must be positive (got {config.actor_cpus:g})")
    if config.gpus_per_actor is not None and config.gpus_per_actor < 0:
        raise ComputeSettingError(f"gpus_per_actor must be 0 or more (got {config.gpus_per_actor:g})")
    if config.batch_size < 0 or config.actor_wait_s <= 0:
        raise ComputeSettingError("batch_size must be 0 (the model's max_batch) or more, and actor_wait_s positive")


def gpus_per_actor(config: JobConfig, spec: ModelSpec, cluster_gpus: float) -> float:
    """GPUs each actor asks for: the setting, else the spec's device (``JobConfig.gpus_per_actor``)."""
    if config.gpus_per_actor is not None:
        return float(config.gpus_per_actor)
    if spec.device == "cuda":
        return 1.0
    if spec.device == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    return 0.0


def actor_pool(config: JobConfig):
    """A fixed pool of ``actors``, or one that follows the autoscaler from ``min_actors`` up to ``actors``."""
    import ray.data

    low = config.min_actors or config.actors
    if low == config.actors:
        return ray.data.ActorPoolStrategy(size=config.actors)
    return ray.data.ActorPoolStrategy(min_size=low, max_size=config.actors, initial_size=low)


def inside_ray_job() -> bool:
    """True in a driver that Ray's job server started (``ray job submit``, a KubeRay RayJob)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


# Environment the workers need from the driver (they do not inherit it): offline hub, the object store endpoint,
# configs. Credentials are never passed through Ray: workers get them from their own environment (pod secrets).
WORKER_ENV = ("HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "TIGHT_PIPELINE_CONFIGS")


def check_ray_address() -> None:
    """Raise ``ClusterError`` for a ``RAY_ADDRESS`` the job cannot use.

    Measured (Ray 2.60): Ray Data's executor fails over Ray Client ("'Worker' object has no attribute 'core_worker'")
    after the plan is written; say so before any work, with the two paths that work."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("ray://") and not inside_ray_job():
        raise ClusterError(f"RAY_ADDRESS={address}: Ray Data jobs do not run over Ray Client (ray://); use the head's "
                           "GCS address (e.g. tight-pipeline-head-svc:6379: this process joins the cluster as a driver) "
                           "or submit the run as a Ray Job (ray job submit --address http://HEAD:8265 -- tight-pipeline "
                           "run ...)")


def connect_ray(num_cpus: int | None = None):
    """Attach to ``RAY_ADDRESS`` when set; otherwise start an embedded, loopback-only, single-node Ray."""
    # Environment first: Ray reads some of these when it is imported.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    check_ray_address()
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost"):
            # A loopback cluster (infra/local): without this the driver dials the node's public IP and hangs.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(token_file)):
            os.environ["RAY_AUTH_MODE"] = "token"  # clusters started with a token refuse drivers without it
    else:
        # Loopback only: without this Ray listens on every interface (its dashboard, GCS and object manager).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        # Ray 2.60 turns token auth on for a new local cluster and says so on the console ("Token authentication is
        # enabled ... Set RAY_AUTH_MODE=disabled to opt out"): the protection stays, the notice is not for our users.
        # (Setting RAY_AUTH_MODE here instead breaks a process that imported ray before: its client sends no token.)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": {k: os.environ[k] for k in WORKER_ENV if k in os.environ}}
    if inside_ray_job():
        # The job's own runtime env (``ray job submit --runtime-env``, a RayJob's runtimeEnvYAML) applies to every
        # worker, and a driver env with a key it already sets is a merge error: add only the keys it lacks.
        job_env = (json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]).get("runtime_env") or {}).get("env_vars") or {}
        extra = {k: v for k, v in runtime_env["env_vars"].items() if k not in job_env}
        ray.init(runtime_env={"env_vars": extra} if extra else None, log_to_driver=True)
    elif address:
        ray.init(runtime_env=runtime_env, log_to_driver=True)
    else:
        tmp = os.environ.get("RAY_TMPDIR") or f"/tmp/tpray-{os.getuid()}"
        os.makedirs(tmp, exist_ok=True)
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=tmp,
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=True,
            logging_level=logging.WARNING,
        )
    return ray


def resolve_digest(config: JobConfig, spec: ModelSpec) -> str:
    """The model's digest (``model_digest``), computed where the weights are.

    Here when this machine has them; otherwise (a RayJob head or a Prefect flow pod without the weights cache) in
    a Ray task placed like an actor (same GPU request), so it runs on a node that mounts the cache. Never a digest
    of missing weights: when no node has them the run stops with ``WeightsNotFound`` naming what is missing."""
    try:
        return model_digest(spec)
    except WeightsNotFound as here:
        local_miss = here
    connect_ray()
    import ray

    gpus = gpus_per_actor(config, spec, ray.cluster_resources().get("GPU", 0))
    task = ray.remote(_remote_digest).options(num_cpus=min(1.0, config.actor_cpus), num_gpus=gpus, max_retries=2)
    try:
        return ray.get(task.remote(spec), timeout=config.actor_wait_s)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"{local_miss}; and no worker with {gpus:g} GPU(s) started within "
                           f"actor_wait_s={config.actor_wait_s:g} s to fingerprint them where they are") from None
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)  # the task's own exception, without Ray's traceback
        if isinstance(cause, WeightsNotFound):
            raise WeightsNotFound(f"{local_miss}; on the workers too: {cause}") from None
        raise


def _remote_digest(spec: ModelSpec) -> str:
    try:
        return model_digest(spec)
    except WeightsNotFound as exc:  # re-raised plainly so the driver can tell it from a crash
        raise WeightsNotFound(str(exc)) from None


# -- the plan ------------------------------------------------------------------------------------------
def plan_job(config: JobConfig, default: Preset | None = None, digest: str | None = None, write: bool = False) -> Plan:
    """Stream the manifest once: count items to do / done before / invalid per preset; with ``write``, write the
    to-do items and resume candidates as plan files and the invalid rows as ``scores/`` parts."""
    # Planning allocates millions of small objects and frees them chunk by chunk (no cycles): the cyclic GC's
    # full passes over the growing id table made it superlinear (1M items: 57 s with it).
    gc_was = gc.isenabled()
    gc.disable()
    try:
        return _plan_job(config, default, digest, write)
    finally:
        if gc_was:
            gc.enable()


def _plan_job(config: JobConfig, default: Preset | None, digest: str | None, write: bool) -> Plan:
    t0 = time.perf_counter()
    config = config.with_run_id()
    all_presets = load_presets()
    default = default or load_preset(config.preset)
    spec = resolve_model_spec(config.model)
    digest = digest or resolve_digest(config, spec)
    done = scores.done_keys(config.output, digest)
    plan = Plan(presets={default.name: default})
    by_ref: dict[str, Preset] = {}
    sha = hashlib.sha256()
    plan_dir = storage.join(scores.prefix(config.output), "_plan", config.run_id)
    variants = config.variant_request()
    for chunk in iter_manifest(config.manifest, set(all_presets), config.allowed_schemes, config.plan_rows, sha,
                               variants):
        for item in chunk.items:
            if item.preset and item.preset not in by_ref:
                by_ref[item.preset] = load_preset(item.preset)
                plan.presets[by_ref[item.preset].name] = by_ref[item.preset]
        chosen = [by_ref[item.preset] if item.preset else default for item in chunk.items]
        if any(p.auto for p in plan.presets.values()):  # the rivals of automatic strength (Plan.vocabulary)
            for item, preset in zip(chunk.items, chosen):
                if preset.auto:
                    run_vocabulary(((item.source_prompt, e.prompt) for e in item.edits), plan.vocabulary)
        # the anti-join, one vectorised lookup per chunk: an item is a resume candidate when all its keys are done
        sizes = np.fromiter((len(item.edits) for item in chunk.items), dtype=np.int64, count=len(chunk.items))
        hashes = scores.key_hashes((p.hash for p, item in zip(chosen, chunk.items) for _ in item.edits),
                                   (item.item_id for item in chunk.items for _ in item.edits),
                                   (e.edit_id for item in chunk.items for e in item.edits), int(sizes.sum()))
        found = scores.contains(done, hashes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(sizes) else sizes
        candidate = np.minimum.reduceat(found, starts) if len(sizes) and len(found) else np.zeros(len(sizes), bool)
        texts = []
        for item, preset, cand, n, start in zip(chunk.items, chosen, candidate.tolist(), sizes.tolist(), starts.tolist()):
            plan.items += 1
            if cand:
                plan.candidate_items += 1
                plan.candidate_rows += n
                plan.count(preset.name, "done_before")
            else:
                plan.todo_items += 1
                plan.count(preset.name, "todo")
            if write:
                if variants is not None and not cand:
                    # A variant item runs only its variants not done yet (--n raised later adds only those);
                    # one inversion serves them, and the done ones are left as they are.
                    done_here = found[start:start + n] if len(found) else np.zeros(n, bool)
                    item = dataclasses.replace(item, edits=tuple(e for e, d in zip(item.edits, done_here) if not d))
                    plan.kept_rows += n - len(item.edits)
                texts.append(dataclasses.replace(item, preset=preset.name).to_json())
        cands = candidate.astype(bool).tolist()
        plan.invalid_rows += len(chunk.invalid)
        plan.invalid_sample += [bad.message() for bad in chunk.invalid[: max(0, 50 - len(plan.invalid_sample))]]
        if chunk.invalid:
            plan.count(default.name, "invalid", len(chunk.invalid))
        if write and texts:
            url = storage.join(plan_dir, f"plan-{len(plan.files):06d}.parquet")
            buf = io.BytesIO()
            pq.write_table(pa.table({"item": texts, "candidate": cands}), buf)
            storage.write_bytes_atomic(url, buf.getvalue())
            plan.files.append(url)
        if write and chunk.invalid:
            scores.write_part(config.output, config.run_id,
                              invalid_rows(chunk.invalid, config.manifest, default, spec, digest, config.run_id), "invalid")
    plan.manifest_digest = sha.hexdigest()
    plan.plan_s = time.perf_counter() - t0
    return plan


def invalid_rows(invalid: list[InvalidRow], manifest_uri: str, preset: Preset, spec: ModelSpec, digest: str,
                 run_id: str) -> list[dict]:
    return [
        {
            "run_id": run_id, "manifest_uri": manifest_uri, "row": bad.row,
            "item_id": bad.item_id if bad.item_id else f"row-{bad.row}", "edit_id": f"*row{bad.row}",
            "preset": preset.name, "preset_hash": preset.hash, "method": preset.method, "model": spec.name,
            "model_digest": digest, "status": "invalid", "error": bad.message(), "finished_at": now(),
        }
        for bad in invalid
    ]


# -- the job -------------------------------------------------------------------------------------------
def run_job(config: JobConfig, progress: Callable[[int, int], None] | None = None) -> JobResult:
    """Plan the manifest, run the to-do items through the actor pool; returns counts (rows stay on storage)."""
    t_start = time.perf_counter()
    config = config.with_run_id()
    default = load_preset(config.preset)
    spec = resolve_model_spec(config.model)
    check_compute(config)
    digest = resolve_digest(config, spec)
    # Two live runs on one output never process the same items: the second waits lease_wait_s, then stops.
    with RunLease(config.output, config.run_id, ttl_s=config.lease_ttl_s, wait_s=config.lease_wait_s):
        plan = plan_job(config, default, digest, write=True)
        log.info("manifest %s: %d items (%d to do, %d resume candidates), %d invalid rows; planned in %.1f s",
                 storage.redact(config.manifest), plan.items, plan.todo_items, plan.candidate_items, plan.invalid_rows,
                 plan.plan_s)
        counts = {"invalid": plan.invalid_rows} if plan.invalid_rows else {}
        processed = redone_candidate_rows = 0
        if plan.files:
            try:
                for summary in _run_ray(config, spec, digest, plan, progress):
                    processed += len(summary["item_id"])
                    for ok, err, rows, cand in zip(summary["ok"], summary["error"], summary["rows"],
                                                   summary["candidate"]):
                        counts["ok"] = counts.get("ok", 0) + int(ok)
                        if err:
                            counts["error"] = counts.get("error", 0) + int(err)
                        if cand:
                            redone_candidate_rows += int(rows)
            finally:
                storage.remove(storage.join(scores.prefix(config.output), "_plan", config.run_id), recursive=True)
    skipped_rows = plan.candidate_rows - redone_candidate_rows + plan.kept_rows
    if skipped_rows:
        counts["ok"] = counts.get("ok", 0) + skipped_rows
    skipped_items = plan.items - processed
    return JobResult(config, default, plan.presets, spec, digest, plan, processed, skipped_items,
                     time.perf_counter() - t_start, scores.prefix(config.output), counts)


def _run_ray(config: JobConfig, spec: ModelSpec, digest: str, plan: Plan, progress):
    """Yield the actor pool's summary batches (one row per item) as items finish."""
    connect_ray()
    import ray.data  # binds ``ray`` (connected above) with its data submodule loaded

    ctx = ray.data.DataContext.get_current()
    # The flows draw one bar of their own on a terminal (items done / total) from ``progress``; Ray Data's bars
    # (one per operator) only when nobody listens.
    ctx.enable_progress_bars = sys.stderr.isatty() and progress is None
    # When they are off on purpose, Ray Data says so once on the console ("Progress bars disabled..."): not news here.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # The plan is a known list of files the driver just wrote. Ray Data 2.60's default Parquet path (DataSource
    # V2) lists them by starting 32 footer-reader actors per read: 13 s of a 30 s four-item job on 2 cores
    # (measured), for footers it already has no use for. The V1 reader reads the same files without them.
    ctx.use_datasource_v2 = False
    check_compute(config)
    gpus = gpus_per_actor(config, spec, ray.cluster_resources().get("GPU", 0))
    embedded = not (os.environ.get("RAY_ADDRESS") or inside_ray_job())
    # 0 = each actor takes its own reserved CPUs; an embedded Ray owns this machine, so its actors share all of it.
    threads = config.torch_threads or (max(1, (os.cpu_count() or 1) // config.actors) if embedded else 0)
    # Ray Data waits for the pool's first actors this long (then raises); by default it would wait forever.
    ctx.wait_for_min_actors_s = max(1, int(config.actor_wait_s))
    limits = storage.ImageLimits(max_pixels=config.max_pixels, min_side=config.min_side)
    batch = config.batch_size or spec.max_batch
    ledger_name = f"tp-ledger-{config.run_id}"
    # On the driver's node (a RayJob's head, the node a Ray Client driver attached to): a GPU node lost mid-run must
    # not take the count of starts with it.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    ledger = ray.remote(AttemptLedger).options(name=ledger_name, num_cpus=0, scheduling_strategy=here).remote()
    try:
        ds = ray.data.read_parquet(plan.files)
        # Blocks of one batch each: resume candidates with all PNGs drop out here, and the actors' batches
        # spread over the pool instead of one block per plan file.
        ds = ds.map_batches(_done_filter, fn_kwargs={"output": config.output,
                                                      "hashes": {n: p.hash for n, p in plan.presets.items()}},
                            batch_size=batch, num_cpus=0.1)
        if plan.todo_items == 0:
            # Only resume candidates: check their PNGs before any actor loads a model (a re-run of a finished job
            # then loads nothing; a GPU actor's model load is the dearest part of a small job).
            ds = ds.materialize()
            if ds.count() == 0:
                return
        ds = ds.map_batches(
            EditorActor,
            fn_constructor_kwargs=dict(
                spec=spec, digest=digest, presets=plan.presets, output=config.output, run_id=config.run_id,
                manifest_uri=config.manifest, limits=limits, torch_threads=threads,
                clip_model=config.clip_model or os.environ.get("TIGHT_PIPELINE_CLIP_MODEL"),
                allowed_schemes=config.allowed_schemes, item_timeout_s=config.item_timeout_s,
                max_attempts=config.max_attempts, ledger_name=ledger_name, rivals=plan.rivals,
                output_size=config.output_size,
            ),
            batch_size=batch,
            compute=actor_pool(config),
            num_cpus=config.actor_cpus,
            num_gpus=gpus,
            # Ray restarts a dead actor and retries its batch; the ledger bounds how often an item is started.
        )
        done = 0
        total = plan.todo_items + plan.candidate_items
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                summary = {k: out[k].tolist() for k in SUMMARY_COLUMNS}
                done += len(summary["item_id"])
                if progress:
                    progress(done, total)
                yield summary
        except ray.exceptions.GetTimeoutError as exc:
            if done:
                raise
            want = {"CPU": config.actor_cpus, **({"GPU": gpus} if gpus else {})}
            have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            raise ClusterError(
                f"no actor started within actor_wait_s={config.actor_wait_s:g} s: waited for "
                f"{config.min_actors or config.actors} actor(s) of {want} each; the cluster has {have} in all. "
                "Add or scale up nodes with those resources, or lower --gpus-per-actor / --actor-cpus / --min-actors, "
                "or raise --actor-wait") from exc
    finally:
        ray.kill(ledger)


def _done_filter(batch, output: str, hashes: dict[str, str]):
    return DoneFilter(output, hashes)(batch)
