"""Every row of the ``scores/`` dataset is built here: ok rows, error rows and invalid manifest rows.

One row per (preset, item, edit) and attempt (``data/scores.py`` holds the schema). The worker makes ok and error
rows (``ok_rows``, ``error_rows``), the planner makes the rows of invalid manifest records (``invalid_rows``);
all of them start from the same columns (``base_row``) and end with ``finished_at`` (``now``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from tight_pipeline.data import storage
from tight_pipeline.data.manifest import InvalidRow, Item
from tight_pipeline.method.presets import Preset
from tight_pipeline.method.specs import ModelSpec


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def base_row(item: Item, preset: Preset, spec: ModelSpec, digest: str, run_id: str, manifest_uri: str) -> dict:
    """The columns every row of ``item`` shares."""
    return {
        "run_id": run_id, "manifest_uri": manifest_uri, "row": item.row, "item_id": item.item_id,
        "source_prompt": item.source_prompt, "image_uri": item.image_uri, "preset": preset.name,
        "preset_hash": preset.hash, "method": preset.method, "model": spec.name, "model_digest": digest,
        "metadata": json.dumps(item.metadata, default=str) if item.metadata else None,
    }


def error_message(item: Item, exc: BaseException) -> str:
    """One line naming the item and the cause (credentials redacted)."""
    kind = type(exc).__name__
    return f"item {item.item_id!r}: {kind}: {storage.redact(str(exc)).splitlines()[0] if str(exc) else kind}"


def error_rows(base: dict, item: Item, message: str, worker: dict, total_s: float) -> list[dict]:
    """One ``error`` row per edit of ``item``; ``worker``: the worker's and its placement's columns."""
    return [{**base, **worker, "edit_id": e.edit_id, "edit_prompt": e.prompt, "request_digest": item.request_digest(e),
             "status": "error", "error": message, "time_total_s": total_s, "finished_at": now()} for e in item.edits]


def ok_rows(base: dict, item: Item, result, notes: list[str], timings: dict, uris: dict, worker: dict,
            image_sha256: str | None = None) -> list[dict]:
    """One ``ok`` row per edit of ``item``: the item's and the edit's scores (``result``: the engine's
    ``ItemResult``), the phase times, where its images are (``uris``: ``input``, ``reconstruction``, and per edit id
    ``edit``, ``region`` and ``size``), the worker's columns and the sha256 of the photo's bytes."""
    return [
        {
            **base, **result.scores, **result.edit_scores[e.edit_id], **timings, **worker,
            "edit_id": e.edit_id, "edit_prompt": e.prompt, "request_digest": item.request_digest(e),
            "image_sha256": image_sha256, "status": "ok", "error": None,
            "warnings": "; ".join(notes + result.warnings) or None,
            "input_uri": uris["input"], "reconstruction_uri": uris["reconstruction"],
            "edit_uri": uris["edit"][e.edit_id], "region_uri": uris["region"].get(e.edit_id),
            "output_width": uris["size"][e.edit_id][0], "output_height": uris["size"][e.edit_id][1],
            **uris.get("checks", {}).get(e.edit_id, {}),
            "finished_at": now(),
        }
        for e in item.edits
    ]


def invalid_rows(invalid: list[InvalidRow], manifest_uri: str, preset: Preset, spec: ModelSpec, digest: str,
                 run_id: str) -> list[dict]:
    """One ``invalid`` row per bad manifest record (``edit_id = "*row<N>"``), its message naming the row."""
    return [
        {
            "run_id": run_id, "manifest_uri": manifest_uri, "row": bad.row,
            "item_id": bad.item_id if bad.item_id else f"row-{bad.row}", "edit_id": f"*row{bad.row}",
            "preset": preset.name, "preset_hash": preset.hash, "method": preset.method, "model": spec.name,
            "model_digest": digest, "status": "invalid", "error": bad.message(), "finished_at": now(),
        }
        for bad in invalid
    ]
