"""A run's settings: ``JobConfig`` (flat, frozen, loggable) and the model family's default preset."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone


from tight_pipeline.data import checks as checks_module, storage
from tight_pipeline.method.specs import ModelSpec
from tight_pipeline.data.variants import VariantRequest, load_style_set



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
        recheck_photos: before skipping a done item, read its photo and masks and compare their sha256 with those its
            outputs were made from (``<item>/source.json``): a photo or mask replaced at the same URI is redone.
            Costs one read per done item and mask (a CPU stage, no model); the plan itself sees prompt, mask URI,
            photo URI and region changes.
        actor_pipeline: batches in flight in each actor at once: one holds the model while the others fetch and
            decode their photos or composite, encode and write their outputs (threads; the model runs one batch at a
            time). 1 = each batch in line, the accelerator idle through its CPU work (benchmarks/bench_overlap.py).
        strengths: render every item at each of these adapter scales too (``--strengths 0.2,0.6,1.0``), in this job:
            item by item its preset ``name@s`` for each ``s`` (its own preset's name, or the run's), each its own rows
            under that preset's hash — resumable and exactly-once like any run; what a review's strength slider moves
            between. Empty: each item at its own preset only.
        checks: the automatic checks' profile (``configs/checks.yaml``) evaluated on every output and written into
            its scores row: the review app queues failures and ``publish`` refuses them unless overridden.
        png_level: zlib level of the output PNGs (0-9). 2 (the default) encodes a 4-MP catalog photo 3x faster
            than Pillow's default 6 for a file ~23 % larger (level 1: as fast, larger; 4: 2.5x, +10 %; 9: 11x
            slower, -11 %: docs/benchmarks.md).
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
    recheck_photos: bool = False
    actor_pipeline: int = 3
    png_level: int = 2
    strengths: tuple[float, ...] = ()
    checks: str = checks_module.DEFAULT

    def __post_init__(self):
        checks_module.load_profile(self.checks)  # an unknown profile is one line before any work
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))  # JSON gives a list
        for s in self.strengths:
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"strength {s:g} must be an adapter scale in 0..1")
        if len(set(self.strengths)) != len(self.strengths):
            raise ValueError(f"strengths {list(self.strengths)} name one strength twice")
        if self.output_size not in ("input", "working"):
            raise ValueError(f"output_size {self.output_size!r} must be 'input' or 'working'")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"png_level {self.png_level} must be 0-9")
        if self.actor_pipeline < 1:
            raise ValueError(f"actor_pipeline {self.actor_pipeline} must be at least 1")

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


def default_preset(preset: str | None, spec: ModelSpec) -> str:
    """``preset`` or, when not given, the model family's default (``flux-balanced`` for FLUX, else ``balanced``):
    the CLI and the flows (deployments) both choose it here."""
    return preset or spec.traits.default_preset



def split_preset(text: str) -> tuple[str, float | None, bool]:
    """``balanced@0.3`` -> ("balanced", 0.3, False); ``smoke@auto`` -> ("smoke", None, True); ``balanced`` ->
    ("balanced", None, False): how the CLI's one string becomes the flows' three parameters (a preset chosen from
    a list, a bounded strength, automatic strength on or off)."""
    name, _, scale = text.partition("@")
    if scale == "auto":
        return name, None, True
    return name, (float(scale) if scale else None), False


def join_preset(name: str, strength: float | None = None, auto_strength: bool = False) -> str:
    """``split_preset``'s inverse (the preset reference ``load_preset`` reads)."""
    if auto_strength and strength is not None:
        raise ValueError(f"preset {name}: give a strength or automatic strength, not both")
    return f"{name}@auto" if auto_strength else f"{name}@{strength:g}" if strength is not None else name
