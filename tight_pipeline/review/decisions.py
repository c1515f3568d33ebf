"""Decisions about a run's outputs, as data: one row per decision under ``<output>/review/decisions/``.

    d = Decision.about(row, "approve", reviewer="ana")        # row: a current scores row (ok) of the output
    write(output, [d])                                         # one new Parquet part, atomic, uniquely named
    current(output)                                            # the latest decision per (preset hash, item, edit)
    with_state(output, rows)                                   # scores rows + their decision, stale or not

A decision names the output it is about by its scores key *and* the sha256 of the PNG the reviewer saw: an output
re-rendered since (another run wrote a new PNG under the same key) makes the decision ``stale`` — shown as such,
never carried over to the new pixels. Every write is a new part with its own name, so two reviewers deciding at once
never overwrite each other; the latest ``decided_at`` wins per key (as the latest ``finished_at`` does for scores).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from dataclasses import asdict, dataclass, fields

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tight_pipeline.data import storage

DECISIONS = ("approve", "reject", "redo")
STATE_OF = {"approve": "approved", "reject": "rejected", "redo": "redo"}  # a decision's review state
KEY = ["preset_hash", "item_id", "edit_id"]
SCHEMA = pa.schema([
    ("preset_hash", pa.string()), ("item_id", pa.string()), ("edit_id", pa.string()),
    ("decision", pa.string()), ("preset", pa.string()), ("adapter_scale", pa.float64()),
    ("edit_uri", pa.string()), ("png_sha256", pa.string()), ("reviewer", pa.string()),
    ("decided_at", pa.string()), ("note", pa.string()),
    # redo: what to render instead (a preset name, e.g. "balanced@0.6"; empty = the same preset again)
    ("redo_preset", pa.string()),
    # approve despite failed automatic checks: the reviewer said so, in this decision
    ("override_checks", pa.bool_()),
    ("decision_id", pa.string()),
])


class DecisionError(ValueError):
    """A decision that cannot be recorded as given (the message names the output and the cause)."""


def prefix(output: str) -> str:
    return storage.join(output, "review", "decisions")


def sha256_of(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


@dataclass(frozen=True)
class Decision:
    preset_hash: str
    item_id: str
    edit_id: str
    decision: str
    preset: str
    adapter_scale: float | None
    edit_uri: str
    png_sha256: str
    reviewer: str
    decided_at: str
    note: str = ""
    redo_preset: str = ""
    override_checks: bool = False
    decision_id: str = ""

    def __post_init__(self):
        where = f"{self.item_id}/{self.edit_id} ({self.preset_hash})"
        if self.decision not in DECISIONS:
            raise DecisionError(f"{where}: decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if not self.reviewer.strip():
            raise DecisionError(f"{where}: a decision needs a reviewer's name")
        if self.redo_preset and self.decision != "redo":
            raise DecisionError(f"{where}: a redo preset ({self.redo_preset!r}) only goes with the decision 'redo'")
        if self.decision == "redo" and not self.redo_preset.strip():
            raise DecisionError(f"{where}: a redo names what to render instead (a preset or NAME@STRENGTH, e.g. "
                                f"balanced@0.6): the same preset again would give the same output")

    @classmethod
    def about(cls, row, decision: str, reviewer: str, note: str = "", redo_preset: str = "",
              override_checks: bool = False, png_sha256: str | None = None) -> "Decision":
        """A decision about a current scores row (``ok``): the PNG's sha256 is read now (what the reviewer saw)
        unless given."""
        get = row.get if hasattr(row, "get") else row.__getitem__
        where = f"{get('item_id')}/{get('edit_id')}"
        if get("status") != "ok" or not isinstance(get("edit_uri"), str) or not get("edit_uri"):
            raise DecisionError(f"{where}: only an output that was written (status ok) can be decided on, "
                                f"this one is {get('status')!r}")
        scale = get("adapter_scale")
        return cls(preset_hash=get("preset_hash"), item_id=get("item_id"), edit_id=get("edit_id"),
                   decision=decision, preset=get("preset") or "",
                   adapter_scale=None if scale is None or pd.isna(scale) else float(scale),
                   edit_uri=get("edit_uri"), png_sha256=png_sha256 or sha256_of(get("edit_uri")),
                   reviewer=reviewer, decided_at=now(), note=note, redo_preset=redo_preset,
                   override_checks=override_checks, decision_id=uuid.uuid4().hex)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def write(output: str, decisions: list[Decision]) -> str | None:
    """Record ``decisions`` as one new Parquet part (atomic; its own name: concurrent writers never collide)."""
    if not decisions:
        return None
    rows = [asdict(d) | {"decision_id": d.decision_id or uuid.uuid4().hex} for d in decisions]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    url = storage.join(prefix(output), f"part-{now().replace(':', '')}-{uuid.uuid4().hex[:12]}.parquet")
    storage.write_bytes_atomic(url, buf.getvalue())
    return url


def read_all(output: str) -> pd.DataFrame:
    """Every decision ever recorded for ``output`` (empty frame with the schema's columns when none)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(prefix(output))
    try:
        files = storage.with_retries(lambda: fs.find(path), "listing the review decisions")
    except FileNotFoundError:
        files = []
    files = sorted(f for f in files if f.endswith(".parquet") and "/." not in f[len(path):])
    if not files:
        return SCHEMA.empty_table().to_pandas()
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(fs.unstrip_protocol(f))), schema=SCHEMA) for f in files]
    return pa.concat_tables(tables).to_pandas()


def current(output: str) -> pd.DataFrame:
    """The latest decision per (preset hash, item, edit)."""
    frame = read_all(output)
    frame = frame.sort_values(["decided_at", "decision_id"], kind="stable").drop_duplicates(KEY, keep="last")
    return frame.reset_index(drop=True)


def with_state(output: str, rows: pd.DataFrame, check_bytes: bool = True) -> pd.DataFrame:
    """``rows`` (current scores rows) with their latest decision's columns and ``review_state``: ``undecided``,
    ``approved``, ``rejected``, ``redo`` or ``stale`` (decided about a PNG that has been re-rendered since: the
    output's bytes, read now when ``check_bytes``, or its URI, differ from what was decided on)."""
    decided = current(output)
    cols = ["decision", "png_sha256", "reviewer", "decided_at", "note", "redo_preset", "override_checks"]
    merged = rows.merge(decided[KEY + cols + ["edit_uri"]].rename(columns={"edit_uri": "decided_uri"}), on=KEY,
                        how="left")
    names = merged["decision"].map(STATE_OF)
    fresh = (merged["decided_uri"] == merged["edit_uri"]).to_numpy().copy()
    if check_bytes:
        for i in (fresh & names.notna().to_numpy()).nonzero()[0]:
            try:
                fresh[i] = sha256_of(merged["edit_uri"].iat[i]) == merged["png_sha256"].iat[i]
            except FileNotFoundError:
                fresh[i] = False
    states = names.where(fresh, "stale").where(names.notna(), "undecided")
    merged["review_state"] = states
    return merged


_FIELDS = [f.name for f in fields(Decision)]
assert _FIELDS == SCHEMA.names, "Decision and SCHEMA list the same columns in the same order"
