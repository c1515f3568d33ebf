"""Redo requests as an ordinary job's manifest: ``redo_manifest(output)``.

Every current, not stale ``redo`` decision of ``output`` becomes part of one manifest under
``<output>/review/requests/redo-<time>.jsonl``: per item its photo, source prompt and metadata, only the edits asked
again, and the preset the reviewer named (``redo_preset``, e.g. ``balanced@0.6``) as the item's preset. A given mask
travels as the region the first run wrote (``region_uri``: the mask at the photo's size). Run into the same output
(``tight-pipeline redo``), the new outputs are rows under the new preset's hash beside the old ones, and the job's
resume skips what was redone already.
"""

from __future__ import annotations

import datetime as dt
import json

from tight_pipeline.data import scores, storage
from tight_pipeline.review import decisions

COLUMNS = ["status", "edit_uri", "image_uri", "source_prompt", "edit_prompt", "metadata", "region_source",
           "region_uri"]


def redo_manifest(output: str) -> tuple[str | None, int]:
    """Write the manifest of the output's open redo requests; returns its URL (None when there is none) and how many
    edits it asks for."""
    rows = scores.read_latest(output, COLUMNS)
    rows = rows[rows["status"] == "ok"]
    state = decisions.with_state(output, rows)
    wanted = state[state["review_state"] == "redo"]
    if not len(wanted):
        return None, 0
    items: dict[tuple[str, str], dict] = {}
    for _, r in wanted.sort_values(["item_id", "edit_id"]).iterrows():
        key = (r["item_id"], r["redo_preset"])  # one manifest line per item and preset asked for
        line = items.setdefault(key, {"item_id": r["item_id"], "image_uri": r["image_uri"],
                                      "source_prompt": r["source_prompt"], "preset": r["redo_preset"], "edits": [],
                                      "metadata": {**_metadata(r["metadata"]), "redo_of": r["preset_hash"],
                                                   "redo_note": r["note"] or ""}})
        edit = {"edit_id": r["edit_id"], "prompt": r["edit_prompt"]}
        if r["region_source"] == "given" and isinstance(r["region_uri"], str) and r["region_uri"]:
            edit["mask_uri"] = r["region_uri"]
        line["edits"].append(edit)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    uri = storage.join(output, "review", "requests", f"redo-{stamp}.jsonl")
    storage.write_bytes_atomic(uri, ("\n".join(json.dumps(v) for v in items.values()) + "\n").encode())
    return uri, len(wanted)


def _metadata(text) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
