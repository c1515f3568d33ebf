"""The plan: the manifest streamed in chunks, each item *to do* or a *resume candidate* (an anti-join of its
keys and request digests against the ``scores/`` key columns), written as Parquet files Ray Data reads; counts for --dry-run."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tight_pipeline.data import scores, storage
from tight_pipeline.method.specs import resolve_model_spec
from tight_pipeline.method.auto.rivals import rival_phrases, run_vocabulary
from tight_pipeline.data.manifest import iter_manifest
from tight_pipeline.method.presets import Preset, load_preset, load_presets

from tight_pipeline.pipeline.cluster import resolve_digest
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.rows import invalid_rows

log = logging.getLogger("tight_pipeline.pipeline.planner")


@dataclass
class Plan:
    """What a run will do, counted while the manifest streams past (nothing per item is kept)."""

    manifest_digest: str = ""
    items: int = 0
    invalid_rows: int = 0
    todo_items: int = 0
    candidate_items: int = 0  # every edit already ok for this model: skipped if the workers find their PNGs
    candidate_rows: int = 0
    # to-do items with an edit done before for another request (its prompt, mask, photo URI or region changed under
    # the same ids): they run again, and their new rows replace the old ones as the latest
    changed_items: int = 0
    changed_edits: int = 0
    changed_sample: list[str] = field(default_factory=list)  # the first 20 such items' ids
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
        self.by_preset.setdefault(preset, {"todo": 0, "done_before": 0, "invalid": 0, "changed": 0})[what] += n


# -- the plan ------------------------------------------------------------------------------------------
def strength_base(preset: str, presets: dict[str, Preset]) -> str | None:
    """The preset a strength sweep renders at other scales: ``name`` of ``name`` or ``name@scale``; ``None`` for a
    preset of automatic strength (it has no fixed scale to sweep: such an item is rendered once, as it asks).
    ``presets``: the loaded presets (the manifest's presets were checked against them)."""
    name, _, scale = preset.partition("@")
    return None if scale == "auto" or presets[name].auto else name


def sweep(item, default: Preset, strengths: tuple[float, ...], presets: dict[str, Preset]) -> list:
    """``item`` once per strength (preset ``base@s``), or as it is when its preset chooses its own strength."""
    base = strength_base(item.preset or default.name, presets)
    if base is None:
        return [item]
    return [dataclasses.replace(item, preset=f"{base}@{s:g}") for s in strengths]


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
        if config.strengths:  # a strength sweep: each item once per strength, each its own preset and rows
            chunk = dataclasses.replace(chunk, items=[x for item in chunk.items
                                                      for x in sweep(item, default, config.strengths, all_presets)])
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
        # for what its edits ask now (their request digests)
        sizes = np.fromiter((len(item.edits) for item in chunk.items), dtype=np.int64, count=len(chunk.items))
        found, changed = done.lookup([p.hash for p, item in zip(chosen, chunk.items) for _ in item.edits],
                                     [item.item_id for item in chunk.items for _ in item.edits],
                                     [e.edit_id for item in chunk.items for e in item.edits],
                                     (item.request_digest(e) for item in chunk.items for e in item.edits))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(sizes) else sizes
        candidate = np.minimum.reduceat(found, starts) if len(sizes) and len(found) else np.zeros(len(sizes), bool)
        redo = np.maximum.reduceat(changed, starts) if len(sizes) and len(changed) else np.zeros(len(sizes), bool)
        plan.changed_edits += int(changed.sum())
        texts = []
        for item, preset, cand, n, start, again in zip(chunk.items, chosen, candidate.tolist(), sizes.tolist(),
                                                        starts.tolist(), redo.tolist()):
            plan.items += 1
            if cand:
                plan.candidate_items += 1
                plan.candidate_rows += n
                plan.count(preset.name, "done_before")
            else:
                plan.todo_items += 1
                plan.count(preset.name, "todo")
                if again:
                    plan.changed_items += 1
                    plan.count(preset.name, "changed")
                    if len(plan.changed_sample) < 20:
                        plan.changed_sample.append(item.item_id)
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


