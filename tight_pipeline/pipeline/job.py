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

The settings are ``config.JobConfig``; the cluster side is ``cluster``; the plan is ``planner``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import pyarrow.compute as pc

from tight_pipeline.data import scores, storage
from tight_pipeline.pipeline.actor import SUMMARY_COLUMNS, AttemptLedger, DoneFilter, EditorActor
from tight_pipeline.method.specs import ModelSpec, resolve_model_spec
from tight_pipeline.pipeline.lease import RunLease
from tight_pipeline.method.presets import Preset, load_preset
from tight_pipeline.pipeline.cluster import (ClusterError, actor_pool, check_compute, connect_ray, gpus_per_actor,
                                            inside_ray_job, resolve_digest)
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.planner import Plan, plan_job

log = logging.getLogger("tight_pipeline.pipeline.job")


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


# -- the job -------------------------------------------------------------------------------------------
def run_job(config: JobConfig, progress: Callable[[int, int], None] | None = None,
            on_plan: Callable[[Plan], None] | None = None) -> JobResult:
    """Plan the manifest (once per run), run the to-do items through the actor pool; returns counts (rows stay on
    storage). ``on_plan(plan)`` is called when the plan is made, before Ray starts (a flow logs it there)."""
    t_start = time.perf_counter()
    config = config.with_run_id()
    default = load_preset(config.preset)
    spec = resolve_model_spec(config.model)
    check_compute(config)
    digest = resolve_digest(config, spec)
    # Two live runs on one output never process the same items: the second waits lease_wait_s, then stops.
    with RunLease(config.output, config.run_id, ttl_s=config.lease_ttl_s, wait_s=config.lease_wait_s) as lease:
        plan = plan_job(config, default, digest, write=True)
        log.info("manifest %s: %d items (%d to do, %d resume candidates), %d invalid rows; planned in %.1f s",
                 storage.redact(config.manifest), plan.items, plan.todo_items, plan.candidate_items, plan.invalid_rows,
                 plan.plan_s)
        if plan.changed_items:
            log.info("%d items run again: %d of their edits were done before for another request (prompt, mask, "
                     "photo URI or region changed under the same ids), e.g. %s", plan.changed_items,
                     plan.changed_edits, ", ".join(plan.changed_sample[:5]))
        if on_plan is not None:
            on_plan(plan)
        counts = {"invalid": plan.invalid_rows} if plan.invalid_rows else {}
        processed = redone_candidate_rows = 0
        if plan.files:
            try:
                for summary in _run_ray(config, spec, digest, plan, progress):
                    lease.check()  # taken over by another run: stop scheduling work (closing the stream stops it)
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
    if redone_candidate_rows:
        log.info("%d rows of resume candidates ran again (a PNG of theirs was missing%s)", redone_candidate_rows,
                 ", or their photo's bytes changed" if config.recheck_photos else "")
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
        # The plan files are small: their reads reserve a tenth of a CPU, so an actor that holds every CPU of its
        # node (actor_cpus = the node's CPUs, a GPU node's usual shape) never starves the stage that feeds it.
        ds = ray.data.read_parquet(plan.files, num_cpus=0.1)
        # Blocks of one batch each: resume candidates with all PNGs drop out here, and the actors' batches
        # spread over the pool instead of one block per plan file.
        ds = ds.map_batches(_done_filter, fn_kwargs={"output": config.output,
                                                      "hashes": {n: p.hash for n, p in plan.presets.items()},
                                                      "recheck_photos": config.recheck_photos,
                                                      "max_bytes": limits.max_bytes},
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
                output_size=config.output_size, png_level=config.png_level, pipeline=config.actor_pipeline,
                checks=config.checks,
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


def _done_filter(batch, output: str, hashes: dict[str, str], recheck_photos: bool = False, max_bytes: int = 0):
    return DoneFilter(output, hashes, recheck_photos, max_bytes)(batch)
