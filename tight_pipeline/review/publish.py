"""Publish exactly what a person approved: ``publish(output, to)``.

Every current ``ok`` output of ``output`` whose latest decision is ``approve`` and not stale (``decisions``) is copied
to ``<to>/<item_id>/<edit_id>.png`` — its bytes checked against the sha256 the reviewer approved — and listed in
``<to>/published.parquet`` (one row per published item and edit: the source photo's URI and sha256, preset, its hash,
strength, approved by / at, the PNG's sha256). Idempotent and resumable: a PNG already at its place with the approved
bytes is not copied again, and a run cut short is finished by the next one. Rejected, undecided, redo and stale
outputs are never published, and neither is an approved output that failed its automatic checks
(``checks_failed``) unless its approval says ``override_checks`` (the reviewer's explicit choice, recorded). Two approved outputs for one item and edit (two strengths approved): the latest
approval is published, and the summary says so. Publish never deletes: an output published earlier and rejected
since stays in place, and the summary names it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tight_pipeline.data import scores, storage
from tight_pipeline.review import decisions

PUBLISHED = pa.schema([
    ("item_id", pa.string()), ("edit_id", pa.string()), ("published_uri", pa.string()),
    ("image_uri", pa.string()), ("image_sha256", pa.string()), ("preset", pa.string()),
    ("preset_hash", pa.string()), ("adapter_scale", pa.float64()), ("png_sha256", pa.string()),
    ("approved_by", pa.string()), ("approved_at", pa.string()), ("published_at", pa.string()),
])
ROW_COLUMNS = ["status", "edit_uri", "image_uri", "image_sha256", "preset", "adapter_scale", "checks_failed"]


@dataclass
class PublishSummary:
    copied: int = 0
    unchanged: int = 0
    superseded: int = 0
    withdrawn: list[str] = field(default_factory=list)  # published earlier, no longer approved (left in place)
    skipped: dict[str, int] = field(default_factory=dict)  # review state -> outputs not published
    manifest_uri: str = ""

    def lines(self) -> list[str]:
        out = [f"published {self.copied} new or changed, {self.unchanged} already in place"]
        if self.superseded:
            out.append(f"{self.superseded} approved outputs superseded by a later approval of the same item and edit")
        for state, n in sorted(self.skipped.items()):
            out.append(f"not published: {n} {state}")
        if self.withdrawn:
            out.append(f"{len(self.withdrawn)} published earlier are no longer approved and were left in place "
                       f"(publish never deletes): {', '.join(self.withdrawn[:10])}"
                       + (" ..." if len(self.withdrawn) > 10 else ""))
        if self.manifest_uri:
            out.append(f"list: {storage.redact(self.manifest_uri)}")
        return out


def held_back(state: pd.DataFrame) -> pd.Series:
    """Approved outputs that failed their automatic checks and whose approval does not override them."""
    failed = state["checks_failed"].fillna("").astype(str) != ""
    return (state["review_state"] == "approved") & failed & ~state["override_checks"].fillna(False).astype(bool)


def destination(to: str, item_id: str, edit_id: str) -> str:
    return storage.join(to, storage.check_id(item_id, "item_id"), f"{storage.check_id(edit_id, 'edit_id')}.png")


def publish(output: str, to: str) -> PublishSummary:
    rows = scores.read_latest(output, ROW_COLUMNS)
    rows = rows[rows["status"] == "ok"]
    state = decisions.with_state(output, rows)
    summary = PublishSummary(skipped={s: int(n) for s, n in state["review_state"].value_counts().items()
                                      if s != "approved"})
    blocked = held_back(state)
    if blocked.any():
        summary.skipped["approved but failed checks (no override)"] = int(blocked.sum())
        state = state[~blocked]
    approved = state[state["review_state"] == "approved"].sort_values("decided_at", kind="stable")
    latest = approved.drop_duplicates(["item_id", "edit_id"], keep="last")
    summary.superseded = len(approved) - len(latest)
    manifest_uri = storage.join(to, "published.parquet")
    try:
        before = pq.read_table(io.BytesIO(storage.read_bytes(manifest_uri))).to_pandas()
    except FileNotFoundError:
        before = PUBLISHED.empty_table().to_pandas()
    listed = {(r.item_id, r.edit_id): r.png_sha256 for r in before.itertuples()}
    new_rows = []
    for _, r in latest.iterrows():
        key = (r["item_id"], r["edit_id"])
        dest = destination(to, *key)
        try:
            in_place = hashlib.sha256(storage.read_bytes(dest)).hexdigest() == r["png_sha256"]
        except FileNotFoundError:
            in_place = False
        if in_place and listed.get(key) == r["png_sha256"]:
            summary.unchanged += 1
            continue
        if not in_place:
            data = storage.read_bytes(r["edit_uri"])
            if hashlib.sha256(data).hexdigest() != r["png_sha256"]:  # re-rendered since with_state looked
                summary.skipped["stale"] = summary.skipped.get("stale", 0) + 1
                continue
            storage.write_bytes_atomic(dest, data)
        summary.copied += 1
        new_rows.append({"item_id": key[0], "edit_id": key[1], "published_uri": dest,
                         "image_uri": r["image_uri"], "image_sha256": r["image_sha256"], "preset": r["preset"],
                         "preset_hash": r["preset_hash"],
                         "adapter_scale": None if pd.isna(r["adapter_scale"]) else float(r["adapter_scale"]),
                         "png_sha256": r["png_sha256"], "approved_by": r["reviewer"], "approved_at": r["decided_at"],
                         "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    if new_rows:  # the list: earlier rows of other items and edits, then this run's
        done = {(x["item_id"], x["edit_id"]) for x in new_rows}
        kept = before[[k not in done for k in zip(before["item_id"], before["edit_id"])]]
        frame = pd.concat([kept, pd.DataFrame(new_rows, columns=PUBLISHED.names)], ignore_index=True)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, schema=PUBLISHED, preserve_index=False), buf)
        storage.write_bytes_atomic(manifest_uri, buf.getvalue())
    approved_now = set(zip(latest["item_id"], latest["edit_id"]))
    summary.withdrawn = sorted(f"{i}/{e}" for i, e in listed if (i, e) not in approved_now)
    summary.manifest_uri = manifest_uri
    return summary
