"""The Ray Data job: manifest → fetch images → Tight Inversion in an actor pool → PNGs + Parquet scores.

    result = run_job(JobConfig(manifest="s3://bucket/m.jsonl", output="s3://bucket/out", preset="balanced"))

No Prefect or MLflow in here (flows/ and tracking.py add those). Guarantees:
- one output row per (item, edit) of the manifest, with ``status`` ok / error / invalid and an ``error``
  naming the item and the cause; an invalid manifest row yields one row with ``edit_id = "*"``;
- a failing item never fails its block: the actor catches it and emits error rows;
- images go to ``<output>/<preset-hash>/<item_id>/<edit_id>.png`` (+ ``reconstruction.png``, ``input.png``),
  scores to ``<output>/scores/scores.parquet``; rows are checkpointed to ``<output>/scores/_parts/`` while the
  run goes, so a crashed run resumes; a re-run skips rows that are ok, were made by the same model (spec and
  weights, ``model_digest``) and whose PNGs exist.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tight_pipeline import storage
from tight_pipeline.engine.models import ModelSpec, model_digest, resolve_model_spec
from tight_pipeline.manifest import Item, Manifest, read_manifest
from tight_pipeline.presets import Preset, load_preset, load_presets

log = logging.getLogger("tight_pipeline.job")

KEY = ["preset_hash", "item_id", "edit_id"]
SCORE_COLUMNS = [
    "psnr_vs_input", "ssim_vs_input", "psnr_vs_vae", "ssim_vs_vae", "vae_psnr_vs_input",
    "edit_change", "edit_psnr_vs_input", "clip_score", "lpips_vs_input",
]
TIME_COLUMNS = ["time_fetch_s", "time_encode_s", "time_invert_s", "time_denoise_s", "time_write_s", "time_total_s"]
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()), ("manifest_uri", pa.string()), ("row", pa.int64()),
        ("item_id", pa.string()), ("edit_id", pa.string()), ("edit_prompt", pa.string()),
        ("source_prompt", pa.string()), ("image_uri", pa.string()),
        ("preset", pa.string()), ("preset_hash", pa.string()), ("method", pa.string()),
        ("model", pa.string()), ("model_digest", pa.string()),
        ("status", pa.string()), ("error", pa.string()), ("warnings", pa.string()),
        *[(c, pa.float64()) for c in SCORE_COLUMNS],
        *[(c, pa.float64()) for c in TIME_COLUMNS],
        ("input_uri", pa.string()), ("reconstruction_uri", pa.string()), ("edit_uri", pa.string()),
        ("metadata", pa.string()), ("worker", pa.string()), ("finished_at", pa.string()),
    ]
)


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
        checkpoint_rows: rows collected before a checkpoint part is written.
        max_failure_rate: fraction of error/invalid rows above which ``JobResult.failed`` is true.
        clip_model: local CLIP folder for edit scores (optional; never downloaded).
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
    checkpoint_rows: int = 32
    max_failure_rate: float = 1.0
    clip_model: str | None = None
    run_id: str = ""

    def with_run_id(self) -> "JobConfig":
        if self.run_id:
            return self
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return dataclasses.replace(self, run_id=f"{stamp}-{uuid.uuid4().hex[:6]}")


@dataclass
class JobResult:
    config: JobConfig
    manifest: Manifest
    preset: Preset  # the run's default preset
    presets: dict[str, Preset]  # every preset used, by name
    model: ModelSpec
    model_digest: str  # the spec's settings + its weights' fingerprint (Parquet ``model_digest``)
    rows: pd.DataFrame  # this manifest's rows (new and previously done), one per (item, edit)
    processed_items: int  # items run through the model in this run
    skipped_items: int  # items already done before this run
    wall_s: float
    scores_uri: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        n = len(self.rows)
        return 0.0 if n == 0 else float((self.rows["status"] != "ok").sum()) / n

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
        # Loopback only: without this Ray listens on every interface (see ../shared/STACK.md).
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


# -- the actor ----------------------------------------------------------------------------------------
class EditorActor:
    """Loads the model once per actor; ``__call__`` turns a batch of items into a batch of score rows."""

    def __init__(self, spec: ModelSpec, digest: str, presets: dict[str, Preset], output: str, run_id: str, manifest_uri: str,
                 limits: storage.ImageLimits, torch_threads: int, clip_model: str | None, allowed_schemes: tuple[str, ...],
                 item_timeout_s: float = 0.0):
        import torch

        from tight_pipeline.engine.runner import TightInversion

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.engine = TightInversion.from_spec(spec, clip_model=clip_model)
        self.spec, self.digest, self.presets, self.output = spec, digest, presets, output
        self.run_id, self.manifest_uri, self.limits = run_id, manifest_uri, limits
        self.allowed = allowed_schemes
        self.item_timeout_s = item_timeout_s
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        """Items of one preset run through the engine together (``edit_items``); each ends in its own rows."""
        items = [Item.from_json(str(text)) for text in batch["item"]]
        rows: list[dict] = []
        by_preset: dict[str, list[Item]] = {}
        for item in items:
            by_preset.setdefault(item.preset, []).append(item)
        for name, group in by_preset.items():
            rows.extend(self.process_group(group, self.presets[name]))
        return rows_to_columns(rows)

    def _deadline(self, t_start: float, n_items: int = 1):
        """A progress callback that aborts the work once it has run longer than ``item_timeout_s`` per item."""
        if self.item_timeout_s <= 0:
            return None
        limit = self.item_timeout_s * n_items

        def check(phase: str) -> None:
            elapsed = time.perf_counter() - t_start
            if elapsed > limit:
                raise TimeoutError(f"item took longer than item_timeout_s={self.item_timeout_s:g} s (aborted during {phase})")

        return check

    def process(self, item: Item) -> list[dict]:
        return self.process_group([item], self.presets[item.preset])

    def process_group(self, items: list[Item], preset: Preset) -> list[dict]:
        """Fetch every item, edit the fetched ones as one batch, write each item's PNGs; rows per item.

        A batch that fails as a whole is run again one item at a time, so only the bad item ends as an error."""
        from tight_pipeline.engine.runner import BatchError, ItemRequest

        t_start = time.perf_counter()
        rows: list[dict] = []
        fetched: list[tuple[Item, Any, list[str], float]] = []
        for item in items:
            t0 = time.perf_counter()
            try:
                image, notes = self.fetch(item)
            except Exception as exc:  # noqa: BLE001 - one bad item must never fail the block
                rows.extend(self.error_rows(item, preset, exc, t0))
                continue
            fetched.append((item, image, notes, time.perf_counter() - t0))
        requests = [ItemRequest(image, item.source_prompt, [(e.edit_id, e.prompt) for e in item.edits])
                    for item, image, _, _ in fetched]
        results = self.engine.edit_items(requests, preset, progress=self._deadline(time.perf_counter(), len(requests))) if requests else []
        for (item, image, notes, fetch_s), request, result in zip(fetched, requests, results):
            if isinstance(result, BatchError):
                result = self.engine.edit_items([request], preset, progress=self._deadline(time.perf_counter()))[0]
            if isinstance(result, BaseException):
                rows.extend(self.error_rows(item, preset, result, t_start))
                continue
            try:
                rows.extend(self.write(item, preset, result, notes, fetch_s, t_start))
            except Exception as exc:  # noqa: BLE001
                rows.extend(self.error_rows(item, preset, exc, t_start))
        return rows

    def fetch(self, item: Item):
        from tight_pipeline.engine.runner import InputError

        storage.check_scheme(item.image_uri, self.allowed)
        try:
            data = storage.read_bytes(item.image_uri, self.limits.max_bytes)
        except FileNotFoundError:
            raise InputError(f"image {storage.redact(item.image_uri)} does not exist") from None
        return storage.decode_image(data, self.limits)

    def error_rows(self, item: Item, preset: Preset, exc: BaseException, t_start: float) -> list[dict]:
        """One error row per edit of ``item``; the message names the item and the cause in one line."""
        kind = type(exc).__name__
        message = f"item {item.item_id!r}: {kind}: {storage.redact(str(exc)).splitlines()[0] if str(exc) else kind}"
        log.warning(message)
        base = base_row(item, preset, self.spec, self.digest, self.run_id, self.manifest_uri)
        return [
            {**base, "worker": self.worker, "edit_id": e.edit_id, "edit_prompt": e.prompt, "status": "error",
             "error": message, "time_total_s": time.perf_counter() - t_start, "finished_at": now()}
            for e in item.edits
        ]

    def write(self, item: Item, preset: Preset, result, notes: list[str], fetch_s: float, t_start: float) -> list[dict]:
        """Write the item's PNGs (reconstruction last) and return its ok rows."""
        t0 = time.perf_counter()
        folder = storage.join(self.output, preset.hash, item.item_id)
        input_uri, recon_uri = storage.join(folder, "input.png"), storage.join(folder, "reconstruction.png")
        storage.write_bytes_atomic(input_uri, storage.encode_png(result.input))
        edit_uris = {}
        for edit in item.edits:
            edit_uris[edit.edit_id] = storage.output_key(self.output, preset.hash, item.item_id, edit.edit_id)
            storage.write_bytes_atomic(edit_uris[edit.edit_id], storage.encode_png(result.edits[edit.edit_id]))
        # The reconstruction is written last: its presence marks the item's images complete.
        storage.write_bytes_atomic(recon_uri, storage.encode_png(result.reconstruction))
        write_s = time.perf_counter() - t0
        t = result.timings
        timings = {
            "time_fetch_s": fetch_s,
            "time_encode_s": t["encode_s"] + t["embed_s"],
            "time_invert_s": t["invert_s"],
            "time_denoise_s": t["denoise_s"] + t["decode_s"],
            "time_write_s": write_s,
            "time_total_s": time.perf_counter() - t_start,
        }
        base = base_row(item, preset, self.spec, self.digest, self.run_id, self.manifest_uri)
        return [
            {
                **base, **result.scores, **result.edit_scores[e.edit_id], **timings, "worker": self.worker,
                "edit_id": e.edit_id, "edit_prompt": e.prompt, "status": "ok", "error": None,
                "warnings": "; ".join(notes + result.warnings) or None,
                "input_uri": input_uri, "reconstruction_uri": recon_uri, "edit_uri": edit_uris[e.edit_id],
                "finished_at": now(),
            }
            for e in item.edits
        ]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def base_row(item: Item, preset: Preset, spec: ModelSpec, digest: str, run_id: str, manifest_uri: str) -> dict:
    import json

    return {
        "run_id": run_id, "manifest_uri": manifest_uri, "row": item.row, "item_id": item.item_id,
        "source_prompt": item.source_prompt, "image_uri": item.image_uri, "preset": preset.name,
        "preset_hash": preset.hash, "method": preset.method, "model": spec.name, "model_digest": digest,
        "metadata": json.dumps(item.metadata, default=str) if item.metadata else None,
    }


def rows_to_columns(rows: list[dict]) -> dict[str, list]:
    return {name: [r.get(name) for r in rows] for name in SCHEMA.names}


def rows_to_table(rows: pd.DataFrame | list[dict]) -> pa.Table:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=SCHEMA.names)
    frame = frame.reindex(columns=SCHEMA.names)
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)


# -- scores on storage ----------------------------------------------------------------------------------
def scores_uri(output: str) -> str:
    return storage.join(output, "scores", "scores.parquet")


def parts_prefix(output: str) -> str:
    return storage.join(output, "scores", "_parts")


def _read_parquet(url: str) -> pd.DataFrame:
    data = storage.read_bytes(url)
    return pq.read_table(io.BytesIO(data)).to_pandas()


def write_parquet_atomic(url: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    pq.write_table(rows_to_table(frame), buf)
    storage.write_bytes_atomic(url, buf.getvalue())


def load_scores(output: str) -> tuple[pd.DataFrame, list[str]]:
    """All rows recorded under ``output`` (compacted file + checkpoint parts of crashed runs), one per key
    (the latest wins), and the part files read."""
    import fsspec

    frames = []
    try:
        frames.append(_read_parquet(scores_uri(output)))
    except FileNotFoundError:
        pass
    fs, prefix = fsspec.core.url_to_fs(parts_prefix(output))
    parts = sorted(storage.with_retries(lambda: fs.glob(prefix.rstrip("/") + "/*.parquet"), "listing checkpoint parts"))
    proto = output.split("://", 1)[0] + "://" if "://" in output else ""
    part_urls = [p if "://" in p else (proto + p if proto and proto != "file://" else p) for p in parts]
    for url in part_urls:
        frames.append(_read_parquet(url))
    if not frames:
        return pd.DataFrame(columns=SCHEMA.names), []
    frame = pd.concat([f.reindex(columns=SCHEMA.names) for f in frames], ignore_index=True)
    frame = frame.sort_values("finished_at", kind="stable").drop_duplicates(KEY, keep="last")
    return frame.reset_index(drop=True), part_urls


def existing_outputs(output: str, preset_hash: str) -> set[str]:
    """Relative keys ``item_id/file.png`` that exist under ``<output>/<preset_hash>/`` (one listing)."""
    import fsspec

    fs, prefix = fsspec.core.url_to_fs(storage.join(output, preset_hash))
    try:
        found = storage.with_retries(lambda: fs.find(prefix), "listing outputs")
    except FileNotFoundError:
        return set()
    prefix = prefix.rstrip("/") + "/"
    return {p[len(prefix):] for p in found if p.startswith(prefix)}


# -- the job -------------------------------------------------------------------------------------------
def plan(manifest: Manifest, presets: dict[str, Preset], default: Preset, done: pd.DataFrame, output: str, digest: str):
    """Split the manifest's items into (to do, already done). Done = every edit row ok, made by this model (same
    ``model_digest``: spec and weights) and its PNGs exist."""
    ok_keys = set()
    if len(done):
        ok = done[(done["status"] == "ok") & (done["model_digest"] == digest)]
        ok_keys = set(map(tuple, ok[KEY].itertuples(index=False, name=None)))
    listings: dict[str, set[str]] = {}
    todo, skipped = [], []
    for item in manifest.items:
        preset = presets[item.preset] if item.preset else default
        if preset.hash not in listings:
            listings[preset.hash] = existing_outputs(output, preset.hash) if ok_keys else set()
        files = listings[preset.hash]
        complete = f"{item.item_id}/reconstruction.png" in files and all(
            (preset.hash, item.item_id, e.edit_id) in ok_keys and f"{item.item_id}/{e.edit_id}.png" in files
            for e in item.edits
        )
        (skipped if complete else todo).append(dataclasses.replace(item, preset=preset.name))
    return todo, skipped


def invalid_rows(manifest: Manifest, preset: Preset, spec: ModelSpec, digest: str, run_id: str) -> list[dict]:
    return [
        {
            "run_id": run_id, "manifest_uri": manifest.uri, "row": bad.row,
            "item_id": bad.item_id if bad.item_id else f"row-{bad.row}", "edit_id": f"*row{bad.row}",
            "preset": preset.name, "preset_hash": preset.hash, "method": preset.method, "model": spec.name,
            "model_digest": digest, "status": "invalid", "error": bad.message(), "finished_at": now(),
        }
        for bad in manifest.invalid
    ]


def run_job(config: JobConfig, progress: Callable[[int, int], None] | None = None) -> JobResult:
    """Run the manifest through the actor pool; returns this manifest's rows and counts."""
    t_start = time.perf_counter()
    config = config.with_run_id()
    all_presets = load_presets()
    default = load_preset(config.preset)
    spec = resolve_model_spec(config.model)
    digest = model_digest(spec)
    manifest = read_manifest(config.manifest, set(all_presets), config.allowed_schemes)
    # Resolve every preset named in the manifest once; items then carry the resolved name.
    by_ref = {ref: load_preset(ref) for ref in {i.preset for i in manifest.items if i.preset}}
    manifest = dataclasses.replace(manifest, items=tuple(
        dataclasses.replace(i, preset=by_ref[i.preset].name) if i.preset else i for i in manifest.items))
    presets = {default.name: default, **{p.name: p for p in by_ref.values()}}
    previous, part_urls = load_scores(config.output)
    todo, skipped = plan(manifest, presets, default, previous, config.output, digest)
    log.info("manifest %s: %d items (%d to do, %d done before), %d invalid rows",
             storage.redact(config.manifest), len(manifest.items), len(todo), len(skipped), len(manifest.invalid))

    new_rows: list[dict] = invalid_rows(manifest, default, spec, digest, config.run_id)
    if todo:
        ray_rows, parts_written = _run_ray(config, spec, digest, presets, todo, progress)
        new_rows += ray_rows
        part_urls += parts_written

    # Compact: previous rows minus what this run redid, minus this manifest's old invalid rows, plus new rows.
    new = pd.DataFrame(new_rows, columns=SCHEMA.names)
    keep = previous
    if len(keep):
        keep = keep[~((keep["manifest_uri"] == manifest.uri) & (keep["status"] == "invalid"))]
    merged = pd.concat([keep, new], ignore_index=True) if len(keep) else new
    merged = merged.sort_values("finished_at", kind="stable").drop_duplicates(KEY, keep="last").reset_index(drop=True)
    write_parquet_atomic(scores_uri(config.output), merged)
    _remove_parts(part_urls)

    wanted = {(presets[i.preset].hash, i.item_id, e.edit_id) for i in todo + skipped for e in i.edits}
    wanted |= {(r["preset_hash"], r["item_id"], r["edit_id"]) for r in new_rows if r["status"] == "invalid"}
    mine = merged[[k in wanted for k in merged[KEY].itertuples(index=False, name=None)]].reset_index(drop=True)
    counts = mine["status"].value_counts().to_dict()
    return JobResult(config, manifest, default, presets, spec, digest, mine, len(todo), len(skipped), time.perf_counter() - t_start,
                     scores_uri(config.output), {k: int(v) for k, v in counts.items()})


def _remove_parts(urls: list[str]) -> None:
    import fsspec

    for url in set(urls):
        fs, path = fsspec.core.url_to_fs(url)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass


def _run_ray(config: JobConfig, spec: ModelSpec, digest: str, presets: dict[str, Preset], todo: list[Item],
             progress) -> tuple[list[dict], list[str]]:
    """Run ``todo`` through the actor pool; returns the rows and the checkpoint parts written."""
    ray = connect_ray()
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    threads = config.torch_threads or max(1, (os.cpu_count() or 1) // max(1, config.actors))
    limits = storage.ImageLimits(max_pixels=config.max_pixels, min_side=config.min_side)
    # Small blocks (one item each, up to 2000 blocks) stream results back as items finish: checkpoints stay
    # fine-grained and a slow item does not hold back a whole block.
    ds = ray.data.from_items([{"item": i.to_json()} for i in todo], override_num_blocks=max(1, min(len(todo), 2000)))
    ds = ds.map_batches(
        EditorActor,
        fn_constructor_args=(spec, digest, presets, config.output, config.run_id, config.manifest, limits, threads,
                             config.clip_model or os.environ.get("TIGHT_PIPELINE_CLIP_MODEL"), config.allowed_schemes,
                             config.item_timeout_s),
        batch_size=config.batch_size or spec.max_batch,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=config.actor_cpus,
        num_gpus=gpus,
        # Ray Data restarts an actor that dies (OOM, lost node) and retries its task; rows stay unique by key.
    )
    rows: list[dict] = []
    pending: list[dict] = []
    done_items: set[str] = set()
    written: list[str] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
        records = batch.to_dict("records")
        rows.extend(records)
        pending.extend(records)
        done_items.update(r["item_id"] for r in records)
        if progress:
            progress(len(done_items), len(todo))
        if len(pending) >= config.checkpoint_rows:
            written.append(_checkpoint(config, pending, len(written)))
            pending = []
    if pending:
        written.append(_checkpoint(config, pending, len(written)))
    return [{k: (None if _isnan(v) else v) for k, v in r.items()} for r in rows], written


def _isnan(v) -> bool:
    return isinstance(v, float) and v != v


def _checkpoint(config: JobConfig, rows: list[dict], n: int) -> str:
    url = storage.join(parts_prefix(config.output), f"part-{config.run_id}-{n:05d}.parquet")
    write_parquet_atomic(url, pd.DataFrame(rows, columns=SCHEMA.names))
    return url
