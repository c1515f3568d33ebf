"""The Ray Data job: manifest → plan → Tight Inversion in an actor pool → PNGs + Parquet parts, written by workers.

    result = run_job(JobConfig(manifest="s3://bucket/m.jsonl", output="s3://bucket/out", preset="balanced"))
    plan = plan_job(config)            # what --dry-run prints: to do / done before / invalid, per preset

No Prefect or MLflow in here (flows/ and tracking.py add those). The driver coordinates and never holds the
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

from tight_pipeline import scores, storage
from tight_pipeline.actor import SUMMARY_COLUMNS, AttemptLedger, DoneFilter, EditorActor, now
from tight_pipeline.engine.specs import ModelSpec, resolve_model_spec
from tight_pipeline.engine.fingerprints import model_digest
from tight_pipeline.engine.rivals import rival_phrases, run_vocabulary
from tight_pipeline.manifest import InvalidRow, iter_manifest
from tight_pipeline.presets import Preset, load_preset, load_presets
from tight_pipeline.variants import VariantRequest, load_style_set

log = logging.getLogger("tight_pipeline.job")

KEY = scores.KEY


@dataclass(frozen=True)
class JobConfig:
    """Everything a run needs; flat, frozen and loggable.

    Attributes:
        manifest: manifest URL (JSONL / CSV / Parquet; any allowed fsspec scheme).
        output: output prefix URL (folder or bucket prefix).
        preset: default preset name (``name@scale`` allowed); items may override it.
        model: ``--model`` reference (folder with model.yaml, spec YAML, or name); ``None`` = catalog-demo.
        actors: size of the actor pool (one model per actor).
        actor_cpus: CPUs reserved per actor (fractional is fine; keep the sum below the node's CPUs).
        gpus_per_actor: GPUs per actor; ``None`` = 1 when the cluster has GPUs, else 0.
        torch_threads: intra-op threads per actor; 0 = CPUs of this machine / actors.
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
    """

    manifest: str
    output: str
    preset: str = "balanced"
    model: str | None = None
    actors: int = 1
    actor_cpus: float = 1.0
    gpus_per_actor: float | None = None
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
    # run weighs its edits against the same rivals): automatic strength's landed check (``engine/rivals.py``)
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


# -- Ray ----------------------------------------------------------------------------------------------
def connect_ray(num_cpus: int | None = None):
    """Attach to ``RAY_ADDRESS`` when set; otherwise start an embedded, loopback-only, single-node Ray."""
    # Environment first: Ray reads some of these when it is imported.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
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
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "TIGHT_PIPELINE_CONFIGS") if k in os.environ}}
    if address:
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
    digest = digest or model_digest(spec)
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
    digest = model_digest(spec)
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
                for ok, err, rows, cand in zip(summary["ok"], summary["error"], summary["rows"], summary["candidate"]):
                    counts["ok"] = counts.get("ok", 0) + int(ok)
                    if err:
                        counts["error"] = counts.get("error", 0) + int(err)
                    if cand:
                        redone_candidate_rows += int(rows)
        finally:
            _remove_prefix(storage.join(scores.prefix(config.output), "_plan", config.run_id))
    skipped_rows = plan.candidate_rows - redone_candidate_rows + plan.kept_rows
    if skipped_rows:
        counts["ok"] = counts.get("ok", 0) + skipped_rows
    skipped_items = plan.items - processed
    return JobResult(config, default, plan.presets, spec, digest, plan, processed, skipped_items,
                     time.perf_counter() - t_start, scores.prefix(config.output), counts)


def _remove_prefix(url: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def _run_ray(config: JobConfig, spec: ModelSpec, digest: str, plan: Plan, progress):
    """Yield the actor pool's summary batches (one row per item) as items finish."""
    connect_ray()
    import ray.data  # binds ``ray`` (connected above) with its data submodule loaded

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    # The plan is a known list of files the driver just wrote. Ray Data 2.60's default Parquet path (DataSource
    # V2) lists them by starting 32 footer-reader actors per read: 13 s of a 30 s four-item job on 2 cores
    # (measured), for footers it already has no use for. The V1 reader reads the same files without them.
    ctx.use_datasource_v2 = False
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    threads = config.torch_threads or max(1, (os.cpu_count() or 1) // max(1, config.actors))
    limits = storage.ImageLimits(max_pixels=config.max_pixels, min_side=config.min_side)
    batch = config.batch_size or spec.max_batch
    ledger_name = f"tp-ledger-{config.run_id}"
    ledger = ray.remote(AttemptLedger).options(name=ledger_name, num_cpus=0).remote()
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
            ),
            batch_size=batch,
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.actor_cpus,
            num_gpus=gpus,
            # Ray restarts a dead actor and retries its batch; the ledger bounds how often an item is started.
        )
        done = 0
        total = plan.todo_items + plan.candidate_items
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            summary = {k: out[k].tolist() for k in SUMMARY_COLUMNS}
            done += len(summary["item_id"])
            if progress:
                progress(done, total)
            yield summary
    finally:
        ray.kill(ledger)


def _done_filter(batch, output: str, hashes: dict[str, str]):
    return DoneFilter(output, hashes)(batch)
