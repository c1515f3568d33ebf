"""The Ray actor that edits items: model loaded once per actor; rows written by the worker as ``scores/`` parts.

    EditorActor(spec=..., digest=..., presets=..., output=..., run_id=..., manifest_uri=..., limits=...)

Per batch (``__call__``): the items' photos are fetched and decoded, items grouped by preset run through
``engine.edit_items`` (one batch on the GPU), a batch that fails as a whole is re-run item by item, each item's
outputs are composited at the photo's size and its PNGs written (reconstruction last: its presence marks the item
complete), and the batch's rows become one Parquet part. Several batches are in an actor at once
(``JobConfig.actor_pipeline``, Ray Data's concurrent calls): only the model stage is serialised (``_accelerator``),
so one batch's fetches and another's encodes and writes run while a third holds the accelerator. ``AttemptLedger`` (one named
actor per run) counts how often each item was started, so an item that kills its worker every time ends as an
error row after ``max_attempts`` starts instead of being retried forever by Ray's actor restarts.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tight_pipeline.data import scores, storage
from tight_pipeline.data.checks import DEFAULT as DEFAULT_CHECKS, load_profile
from tight_pipeline.pipeline import rows as score_rows

from tight_pipeline.reporting import sheets
from tight_pipeline.method.specs import ModelSpec
from tight_pipeline.data.manifest import Item
from tight_pipeline.method.presets import Preset

log = logging.getLogger("tight_pipeline.pipeline.actor")

SUMMARY_COLUMNS = ["item_id", "rows", "ok", "error", "candidate"]



class PngCache:
    """PNG bytes per image object, encoded once, on ``pool`` (a thread pool; ``None``: here) so that an item's outputs
    are encoded side by side: ``submit`` starts an encoding, ``__call__`` waits for its bytes. It keeps every image it
    was given: an ``id`` is only unique while its object lives, and a cache keyed by the ids of temporaries
    (``Image.fromarray(...)`` per output) once handed an edit the bytes of the photo encoded just before it, whose
    freed id the edit's image had reused."""

    def __init__(self, level: int = storage.PNG_LEVEL, pool: ThreadPoolExecutor | None = None):
        self._seen: dict[int, tuple[object, Any]] = {}
        self.level, self.pool = level, pool

    def submit(self, image):
        hit = self._seen.get(id(image))
        if hit is None or hit[0] is not image:
            job = (self.pool.submit(storage.encode_png, image, self.level) if self.pool is not None
                   else storage.encode_png(image, self.level))
            hit = self._seen[id(image)] = (image, job)
        return image

    def __call__(self, image) -> bytes:
        self.submit(image)
        job = self._seen[id(image)][1]
        return job if isinstance(job, bytes) else job.result()


class WorkerDied(RuntimeError):
    """An item whose worker process died on every attempt."""


class Gate:
    """Shared by the batches in flight, exclusive for an item re-run after a worker death: a crash while it runs
    (the reason it is re-run) then cannot take other batches' items down with it and count against them."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive requests first: new batches wait behind them

    def shared(self):
        return _Hold(self, exclusive=False)

    def exclusive(self):
        return _Hold(self, exclusive=True)


class _Hold:
    def __init__(self, gate: Gate, exclusive: bool):
        self.gate, self.exclusive = gate, exclusive

    def __enter__(self):
        g = self.gate
        with g._cond:
            if self.exclusive:
                g._waiting += 1
                g._cond.wait_for(lambda: not g._exclusive and g._shared == 0)
                g._waiting -= 1
                g._exclusive = True
            else:
                g._cond.wait_for(lambda: not g._exclusive and g._waiting == 0)
                g._shared += 1
        return self

    def __exit__(self, *exc):
        g = self.gate
        with g._cond:
            if self.exclusive:
                g._exclusive = False
            else:
                g._shared -= 1
            g._cond.notify_all()


class AttemptLedger:
    """How many times each in-flight item was started in this run (a named Ray actor; survives worker deaths).

    Entries exist only while an item's batch is in flight (``release`` drops them), so its memory follows the
    work in progress, not the catalog."""

    def __init__(self):
        self.state: dict[str, dict] = {}

    def start(self, keys: list[str]) -> dict[str, dict]:
        """Count a start of every key; returns the earlier state of keys started before (a retried batch)."""
        before = {k: dict(self.state[k]) for k in keys if k in self.state}
        for k in keys:
            self.state.setdefault(k, {"starts": 0, "summary": None})
            if k not in before:
                self.state[k]["starts"] += 1
        return before

    def begin_alone(self, key: str) -> None:
        self.state[key]["starts"] += 1

    def finish_alone(self, key: str, summary: dict) -> None:
        self.state[key]["summary"] = summary

    def release(self, keys: list[str]) -> None:
        for k in keys:
            self.state.pop(k, None)


def summarize(item: Item, rows: list[dict], candidate: bool) -> dict:
    return {"item_id": item.item_id, "rows": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "error": sum(r["status"] != "ok" for r in rows), "candidate": bool(candidate)}


class EditorActor:
    """Loads the model once per actor; ``__call__`` turns a batch of items into a batch of score rows."""

    def __init__(self, *, spec: ModelSpec, digest: str, presets: dict[str, Preset], output: str, run_id: str,
                 manifest_uri: str, limits: storage.ImageLimits, torch_threads: int = 0, clip_model: str | None = None,
                 allowed_schemes: tuple[str, ...] = storage.DEFAULT_SCHEMES, item_timeout_s: float = 0.0,
                 max_attempts: int = 3, ledger_name: str | None = None, rivals: tuple[str, ...] | None = None,
                 output_size: str = "input", png_level: int = 2, pipeline: int = 3, checks: str = DEFAULT_CHECKS):
        import torch

        from tight_pipeline.method.factory import load_engine

        import ray

        context = ray.get_runtime_context()
        if torch_threads <= 0:
            # This actor's own share of its node (what Ray reserved for it), not the driver's machine.
            torch_threads = max(1, math.ceil(context.get_assigned_resources().get("CPU", 1)))
        torch.set_num_threads(torch_threads)
        self.engine = load_engine(spec, clip_model=clip_model)
        self.engine.finish_outputs = False  # composited at the photo's size here, outside the model stage
        self._accelerator = threading.Lock()  # one batch on the model at a time
        # The PNG encodes (and the photo decodes of a batch) of every batch in the actor share one pool sized from
        # the actor's CPUs, so a finished batch's outputs use them all while the next batch holds the model.
        # ``pipeline=1`` is the in-line actor: one batch at a time, one thread.
        self._cpu = ThreadPoolExecutor(max_workers=1 if pipeline <= 1 else max(2, torch_threads),
                                       thread_name_prefix="tp-cpu")
        self._gate = Gate()
        self.png_level = png_level
        self.checks = load_profile(checks)  # the automatic checks every output is measured against
        self.spec, self.digest, self.presets, self.output = spec, digest, presets, output
        self.run_id, self.manifest_uri, self.limits = run_id, manifest_uri, limits
        self.allowed = allowed_schemes
        self.item_timeout_s = item_timeout_s
        self.max_attempts = max_attempts
        self.rivals = rivals  # the run's rival phrases for automatic strength (job.Plan.rivals)
        self.output_size = output_size  # input: PNGs at the photo's size; working: the model's images
        self.ledger = ray.get_actor(ledger_name) if ledger_name else None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.placement = {"node_id": context.get_node_id(), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        """Items of one preset run through the engine together (``edit_items``); each ends in its own rows.

        The rows of the batch are written as one part of ``scores/`` here, in the worker; the driver gets one
        small summary row per item. Items that were started before by a worker that died run one at a time
        (written as they finish); after ``max_attempts`` starts an item becomes an error row without running.
        """
        items = [Item.from_json(str(text)) for text in batch["item"]]
        # keyed by (preset, item): a strength sweep puts one item in the plan once per strength
        candidate = dict(zip(((i.preset, i.item_id) for i in items), batch.get("candidate", [False] * len(items))))
        keys = [f"{self.presets[i.preset].hash}/{i.item_id}" for i in items]
        import ray

        summary: list[dict] = []
        # Starts are counted only while no re-run item is running alone (the gate): a batch that merely waited
        # in this actor while such an item crashed it is not charged for that crash.
        with self._gate.shared():
            starts = ray.get(self.ledger.start.remote(keys)) if self.ledger else {}
            fresh, retried = [], []
            for item, key in zip(items, keys):
                (retried if key in starts else fresh).append(item)
            if not retried:
                self._fresh(fresh, candidate, summary)
        if retried:
            with self._gate.exclusive():
                self._retried(retried, starts, candidate, summary)
                self._fresh(fresh, candidate, summary)
        if self.ledger:
            ray.get(self.ledger.release.remote(keys))
        return {k: [s[k] for s in summary] for k in SUMMARY_COLUMNS}

    def _retried(self, retried: list[Item], starts: dict, candidate: dict, summary: list[dict]) -> None:
        """Items started before by a worker that died: one at a time, each written as it finishes."""
        import ray

        for item in retried:
            key = f"{self.presets[item.preset].hash}/{item.item_id}"
            state = starts[key]
            if state.get("summary"):  # finished alone in an earlier attempt of this batch: its part is written
                summary.append(state["summary"])
                continue
            preset = self.presets[item.preset]
            if state["starts"] >= self.max_attempts:
                exc = WorkerDied(f"its worker died {state['starts']} times while editing it (out of memory, a crash in "
                                 f"native code or a lost node); not retried again (max_attempts={self.max_attempts})")
                rows = self.error_rows(item, preset, exc, time.perf_counter())
            else:
                ray.get(self.ledger.begin_alone.remote(key))
                rows = self.process_group([item], preset)
            scores.write_part(self.output, self.run_id, rows, tag=f"{os.getpid()}")
            row_summary = summarize(item, rows, candidate.get((item.preset, item.item_id), False))
            ray.get(self.ledger.finish_alone.remote(key, row_summary))
            summary.append(row_summary)

    def _fresh(self, fresh: list[Item], candidate: dict, summary: list[dict]) -> None:
        if not fresh:
            return
        rows = []
        by_preset: dict[str, list[Item]] = {}
        for item in fresh:
            by_preset.setdefault(item.preset, []).append(item)
        for name, group in by_preset.items():
            rows.extend(self.process_group(group, self.presets[name]))
        scores.write_part(self.output, self.run_id, rows, tag=f"{os.getpid()}")
        by_item: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            by_item.setdefault((r["preset"], r["item_id"]), []).append(r)
        for item in fresh:
            key = (self.presets[item.preset].name, item.item_id)
            summary.append(summarize(item, by_item.get(key, []), candidate.get((item.preset, item.item_id), False)))

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

    def process_group(self, items: list[Item], preset: Preset) -> list[dict]:
        """Fetch every item, edit the fetched ones as one batch, finish and write each item; rows per item.

        Only the model stage holds ``_accelerator``: fetching, decoding, compositing at the photo's size, encoding
        and writing run beside other batches' model stages. A batch that fails as a whole is run again one item at
        a time, so only the bad item ends as an error."""
        from tight_pipeline.method.auto import strength
        from tight_pipeline.method.items import BatchError, ItemRequest, finish_regions

        t_start = time.perf_counter()
        rows: list[dict] = []
        fetched: list[tuple[Item, Any, list[str], float, tuple[str, dict[str, str]], bool]] = []
        requests = []

        def fetch_one(item: Item):
            t0 = time.perf_counter()
            try:
                photo, sha = self.fetch(item)
                regions, mask_shas = self.regions(item, photo)
            except Exception as exc:  # noqa: BLE001 - one bad item must never fail the block
                return self.error_rows(item, preset, exc, t0)
            return photo, sha, regions, mask_shas, time.perf_counter() - t0

        # A batch's photos are decoded side by side (one photo: in this call's own thread, never queued behind
        # another batch's encodes).
        for item, got in zip(items, self._cpu.map(fetch_one, items) if len(items) > 1 else map(fetch_one, items)):
            if isinstance(got, list):
                rows.extend(got)
                continue
            photo, sha, regions, mask_shas, fetch_s = got
            fetched.append((item, photo.image, photo.notes, fetch_s, (sha, mask_shas), not photo.notes))
            requests.append(ItemRequest(photo.image, item.source_prompt, [(e.edit_id, e.prompt) for e in item.edits],
                                        regions=regions, pixels=photo.pixels))
        results = []
        if requests:
            with self._accelerator:
                results = strength.run_items(self.engine, requests, preset,
                                             self._deadline(time.perf_counter(), len(requests)), self.rivals)
                results = [strength.run_items(self.engine, [request], preset, self._deadline(time.perf_counter()),
                                              self.rivals)[0] if isinstance(result, BatchError) else result
                           for request, result in zip(requests, results)]

        def finish_one(job) -> list[dict]:
            (item, _image, notes, fetch_s, shas, as_stored), request, result = job
            if isinstance(result, BaseException):
                return self.error_rows(item, preset, result, t_start)
            try:
                finish_regions(result, request, preset)
                return self.write(item, preset, result, notes, fetch_s, t_start, shas, as_stored)
            except Exception as exc:  # noqa: BLE001
                return self.error_rows(item, preset, exc, t_start)

        for job in zip(fetched, requests, results):
            rows.extend(finish_one(job))
        return rows

    def fetch(self, item: Item) -> tuple[storage.Photo, str]:
        """The decoded photo and the sha256 of its bytes (recorded on the rows and in the item's ``source.json``)."""
        from tight_pipeline.method.items import InputError

        storage.check_scheme(item.image_uri, self.allowed)
        try:
            data = storage.read_bytes(item.image_uri, self.limits.max_bytes)
        except FileNotFoundError:
            raise InputError(f"image {storage.redact(item.image_uri)} does not exist") from None
        return storage.decode_photo(data, self.limits), hashlib.sha256(data).hexdigest()

    def regions(self, item: Item, photo: storage.Photo) -> tuple[dict, dict[str, str]]:
        """Each edit's region: its own mask, else the item's (``mask`` unless the edit says ``auto``/``whole``);
        edits without a mask or a region of their own get the preset's (absent from the dict). Masks are read
        once per URL and must have the photo's upright size. Also the sha256 of each mask's bytes, by URL."""
        from tight_pipeline.method.region import EditRegion, RegionError
        from tight_pipeline.method.items import InputError

        masks: dict[str, Any] = {}
        shas: dict[str, str] = {}

        def mask(uri: str):
            if uri not in masks:
                storage.check_scheme(uri, self.allowed)
                try:
                    data = storage.read_bytes(uri, self.limits.max_bytes)
                except FileNotFoundError:
                    raise InputError(f"mask {storage.redact(uri)} does not exist") from None
                shas[uri] = hashlib.sha256(data).hexdigest()
                masks[uri] = storage.decode_mask(data, photo.image.size, self.limits,
                                                 what=f"mask {storage.redact(uri)}")
            return masks[uri]

        out = {}
        try:
            for e in item.edits:
                uri = item.mask_for(e)
                mode = e.region or ("mask" if uri else None)
                if mode is not None:
                    out[e.edit_id] = EditRegion(mode, mask(uri) if uri else None)
        except RegionError as exc:
            raise InputError(str(exc)) from None
        return out, shas
    def error_rows(self, item: Item, preset: Preset, exc: BaseException, t_start: float) -> list[dict]:
        """One error row per edit of ``item``; the message names the item and the cause in one line."""
        message = score_rows.error_message(item, exc)
        log.warning(message)
        return score_rows.error_rows(self.base_row(item, preset), item, message, self.worker_columns(),
                               time.perf_counter() - t_start)

    def base_row(self, item: Item, preset: Preset) -> dict:
        return score_rows.base_row(item, preset, self.spec, self.digest, self.run_id, self.manifest_uri)

    def worker_columns(self) -> dict:
        return {"worker": self.worker, **self.placement}

    def variant_sheet(self, item: Item, preset: Preset, result, variants: dict):
        """input | every variant of the item, labelled with its style (variants done in an earlier run are
        read back from the output, so the sheet shows all of them)."""
        from PIL import Image

        tiles = [("input", result.input)]
        for edit_id, style in variants.get("styles", {}).items():
            image = result.edits.get(edit_id)
            if image is None:
                try:
                    image = Image.open(io.BytesIO(storage.read_bytes(
                        storage.output_key(self.output, preset.hash, item.item_id, edit_id)))).convert("RGB")
                except (FileNotFoundError, storage.StorageError, OSError):
                    continue
            tiles.append((re.sub(r"{[A-Za-z_][A-Za-z0-9_]*}", "", style).strip(" ,"), image))
        return sheets.side_by_side(tiles, tile=256)

    def check(self, pixels: np.ndarray, photo_size: tuple[int, int], scores: dict, photo_product) -> dict:
        """The output's automatic checks (``data/checks.py``) as its scores row's columns. The product (for the
        backdrop and frame-share checks) is the studio-shot product of the output, else ``photo_product()`` (the
        photo's, found once per item)."""
        from tight_pipeline.method import region

        product = None
        if self.checks.needs_product:
            product = region.studio_product(pixels)
            if product is None:
                product = photo_product()
        kept = scores.get("psnr_outside_region") if scores.get("region_source") not in (None, "whole") else None
        return self.checks.evaluate(pixels, photo_size, kept, product).columns()

    def write(self, item: Item, preset: Preset, result, notes: list[str], fetch_s: float, t_start: float,
              shas: tuple[str, dict[str, str]], as_stored: bool = False) -> list[dict]:
        """Write the item's PNGs (reconstruction last; at the photo's size unless ``output_size`` is ``working``)
        and ``source.json`` (``shas``: the sha256 of the photo's and of each mask's bytes, which
        ``--recheck-photos`` compares), and return its ok rows. ``input.png`` only where the input is not the photo
        as stored (``as_stored``: decoded with no conversion; then the rows' ``input_uri`` is the photo's URI)."""
        from PIL import Image

        t0 = time.perf_counter()
        folder = storage.join(self.output, preset.hash, item.item_id)
        input_uri, recon_uri = storage.join(folder, "input.png"), storage.join(folder, "reconstruction.png")
        level = self.png_level
        # Every PNG of the item is handed to the actor's pool first (encoded side by side), then written in order.
        png = PngCache(level, self._cpu)  # one encoding per image object (passthrough returns one image for all)

        full = self.output_size == "input" and result.full_reconstruction is not None
        if full and as_stored:
            input_uri, input_image = item.image_uri, None  # the photo itself: not encoded again
        else:
            input_image = png.submit(Image.fromarray(result.photo) if full else result.input)
        recon_image = png.submit(Image.fromarray(result.full_reconstruction) if full else result.reconstruction)
        edit_images, region_images, sizes, checked = {}, {}, {}, {}
        photo_size = (result.photo.shape[1], result.photo.shape[0]) if result.photo is not None else result.input.size
        found: list = []

        def photo_product():  # the photo's studio product, looked for at most once per item
            if not found:
                from tight_pipeline.method import region

                found.append(region.studio_product(result.photo) if full and result.photo is not None else None)
            return found[0]
        for edit in item.edits:
            pixels = result.full_edits[edit.edit_id] if full else np.asarray(result.edits[edit.edit_id])
            image = Image.fromarray(pixels)
            edit_images[edit.edit_id] = png.submit(image)
            sizes[edit.edit_id] = image.size
            checked[edit.edit_id] = self.check(pixels, photo_size, result.edit_scores[edit.edit_id], photo_product)
            mask = result.region_masks.get(edit.edit_id)
            if mask is not None and result.edit_scores[edit.edit_id].get("region_source") != "whole":
                # the region as a picture (white = changed; at the photo's size): sheets outline it
                region_images[edit.edit_id] = png.submit(Image.fromarray(mask.astype("uint8") * 255))
        variants = item.metadata.get("variants") if isinstance(item.metadata, dict) else None
        sheet = png.submit(self.variant_sheet(item, preset, result, variants)) if variants else None

        if input_image is not None:
            storage.write_bytes_atomic(input_uri, png(input_image))
        edit_uris, region_uris = {}, {}
        for edit_id, image in edit_images.items():
            edit_uris[edit_id] = storage.output_key(self.output, preset.hash, item.item_id, edit_id)
            storage.write_bytes_atomic(edit_uris[edit_id], png(image))
        for edit_id, image in region_images.items():
            region_uris[edit_id] = storage.join(folder, "regions", f"{edit_id}.png")
            storage.write_bytes_atomic(region_uris[edit_id], png(image))
        if sheet is not None:
            storage.write_bytes_atomic(storage.join(folder, "variants.png"), png(sheet))
        storage.write_bytes_atomic(storage.join(folder, SOURCE_FILE), source_record(item, *shas))
        # The reconstruction is written last: its presence marks the item's images complete.
        storage.write_bytes_atomic(recon_uri, png(recon_image))
        write_s = time.perf_counter() - t0
        t = result.timings
        timings = {
            "time_fetch_s": fetch_s,
            "time_encode_s": t.encode_s + t.embed_s,
            "time_invert_s": t.invert_s,
            "time_denoise_s": t.denoise_s + t.decode_s,
            "time_write_s": write_s,
            "time_region_s": t.region_s,
            "time_judge_s": t.judge_s or None,
            "time_total_s": time.perf_counter() - t_start,
        }
        uris = {"input": input_uri, "reconstruction": recon_uri, "edit": edit_uris, "region": region_uris, "size": sizes,
                "checks": checked}
        return score_rows.ok_rows(self.base_row(item, preset), item, result, notes, timings, uris,
                                  self.worker_columns(), image_sha256=shas[0])



SOURCE_FILE = "source.json"


def source_record(item: Item, sha: str, mask_shas: dict[str, str] | None = None) -> bytes:
    """``<item folder>/source.json``: the photo the outputs were made from (URI, sha256 of its bytes), the masks
    (sha256 by URI) and what each edit asked (``Item.request_digest``)."""
    return json.dumps({"item_id": item.item_id, "image_uri": storage.redact(item.image_uri), "image_sha256": sha,
                       "masks": {storage.redact(u): s for u, s in sorted((mask_shas or {}).items())},
                       "edits": {e.edit_id: item.request_digest(e) for e in item.edits}}, indent=1).encode()


def outputs_exist(output: str, preset_hash: str, item: Item) -> bool:
    """The item's reconstruction (written last) and every edit PNG exist under ``output``."""
    folder = storage.join(output, preset_hash, item.item_id)
    return storage.exists(storage.join(folder, "reconstruction.png")) and all(
        storage.exists(storage.output_key(output, preset_hash, item.item_id, e.edit_id)) for e in item.edits)


def photo_unchanged(output: str, preset_hash: str, item: Item, max_bytes: int) -> bool:
    """The photo at the item's URI, and each mask its edits use, have the bytes its outputs were made from
    (``source.json``'s sha256s). False when that record is missing (outputs of a version before it: they cannot be
    checked, so they are redone) or a file cannot be read (the worker then writes the item's error row)."""
    def sha(uri: str) -> str:
        return hashlib.sha256(storage.read_bytes(uri, max_bytes)).hexdigest()

    try:
        record = json.loads(storage.read_bytes(storage.join(output, preset_hash, item.item_id, SOURCE_FILE)))
        if record.get("image_sha256") != sha(item.image_uri):
            return False
        masks = record.get("masks") or {}
        for uri in {item.mask_for(e) for e in item.edits} - {None}:
            if masks.get(storage.redact(uri)) != sha(uri):
                return False
    except (FileNotFoundError, storage.StorageError, ValueError):
        return False
    return True


class DoneFilter:
    """A cheap CPU stage before the actors: drops resume candidates whose PNGs all exist (they stay done); with
    ``recheck_photos``, only those whose photo also has the bytes it had (``photo_unchanged``)."""

    def __init__(self, output: str, preset_hashes: dict[str, str], recheck_photos: bool = False,
                 max_bytes: int = 0):
        self.output, self.hashes = output, preset_hashes
        self.recheck_photos, self.max_bytes = recheck_photos, max_bytes or storage.ImageLimits().max_bytes

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        keep_item, keep_cand = [], []
        for text, cand in zip(batch["item"], batch["candidate"]):
            if cand:
                item = Item.from_json(str(text))
                preset_hash = self.hashes[item.preset]
                if outputs_exist(self.output, preset_hash, item) and (
                        not self.recheck_photos or photo_unchanged(self.output, preset_hash, item, self.max_bytes)):
                    continue
            keep_item.append(text)
            keep_cand.append(bool(cand))
        return {"item": keep_item, "candidate": keep_cand}
