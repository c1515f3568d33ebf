"""What a reviewer looks at, read from what runs wrote: ``Queue(output)``.

    q = Queue("s3://bucket/out")           # reads the scores' small columns once (no PNG is read)
    q.keys("undecided", page=0)            # one page of (item_id, edit_id), in the queue's order
    card = q.card("mug-1", "blue")         # the photo and every rendered strength of that edit, with its scores

A card holds every current ``ok`` output of one (item, edit) — one per preset hash, e.g. ``balanced@0.2``,
``balanced@0.6``, ``balanced@1.0`` of a strength sweep — sorted by strength, each with its review state
(``decisions.with_state``), its scores and its automatic checks (``data/checks.py``) in words a catalog manager
reads. Queues: ``all``, ``undecided`` (no output of the edit decided yet, or only stale decisions), ``failed checks``
(some output of the edit failed its checks), ``worst first`` (failed checks first, then the least kept photo). Pages are
:data:`PAGE` keys long: a 10,000-item output is never turned into 10,000 cards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tight_pipeline.data import checks, scores
from tight_pipeline.review import decisions

PAGE = 50
QUEUES = ("all", "undecided", "failed checks", "worst first")
COLUMNS = ["status", "edit_uri", "image_uri", "preset", "adapter_scale", "edit_prompt", "psnr_outside_region",
           "psnr_vs_input", "edit_change", "auto_reason", "region_fill", "region_source", "output_width",
           "output_height", "checks_profile", "checks_failed", "checks"]


@dataclass(frozen=True)
class Output:
    """One rendered output of an edit (one preset hash)."""

    preset_hash: str
    preset: str
    strength: float | None
    edit_uri: str
    kept_db: float | None  # PSNR vs the photo outside the edited region (the whole photo when no region)
    change: float | None  # how far the edit moved the pixels (edit_change: mean absolute difference, 0..1)
    landed: str  # the automatic strength's verdict ("landed", ...), "" for a fixed strength
    fill: str
    state: str  # undecided | approved | rejected | redo | stale
    failed: str = ""  # the automatic checks it failed (comma-separated; "" = passed or not checked)
    checks: str = ""  # the checks in words ("" when passed)

    def words(self) -> str:
        """The scores as a sentence for a catalog manager."""
        parts = []
        if self.kept_db is not None:
            parts.append(f"keeps {self.kept_db:.0f} dB of the photo outside the change"
                         + (" (45+ dB: no visible difference)" if self.kept_db >= 45 else ""))
        if self.change is not None:
            parts.append(f"changes {100 * self.change:.1f}% of the pixel values")
        if self.landed:
            parts.append("edit landed" if self.landed == "landed" else f"edit check: {self.landed}")
        if self.fill:
            parts.append(f"filled as {self.fill}")
        if self.checks:
            parts.append(self.checks)
        return "; ".join(parts) or "no scores recorded"


@dataclass(frozen=True)
class Card:
    item_id: str
    edit_id: str
    prompt: str
    image_uri: str
    outputs: tuple[Output, ...]  # by strength

    def nearest(self, strength: float) -> Output:
        """The rendered output closest to ``strength`` (the slider snaps to what was rendered)."""
        known = [o for o in self.outputs if o.strength is not None] or list(self.outputs)
        return min(known, key=lambda o: abs((o.strength if o.strength is not None else 0.0) - strength))


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _profile(name) -> checks.Profile | None:
    try:
        return checks.load_profile(name) if isinstance(name, str) and name else None
    except checks.ChecksError:  # a profile renamed since the run: the words go without the thresholds
        return None


class Queue:
    def __init__(self, output: str):
        self.output = output
        self.reload()

    def reload(self) -> None:
        rows = scores.read_latest(self.output, COLUMNS)
        rows = rows[rows["status"] == "ok"].copy()
        rows["kept_db"] = rows["psnr_outside_region"].where(rows["psnr_outside_region"].notna(), rows["psnr_vs_input"])
        self.rows = decisions.with_state(self.output, rows, check_bytes=False).set_index(["item_id", "edit_id"],
                                                                                          drop=False).sort_index()
        self.rows["failed"] = self.rows["checks_failed"].fillna("").astype(str) != ""
        per = self.rows.groupby(level=[0, 1], sort=True)
        worst = pd.DataFrame({"ok": ~per["failed"].any(), "kept": per["kept_db"].min()})
        self._order = {
            "all": list(per.size().index),
            "undecided": [k for k, s in per["review_state"] if s.isin(["undecided", "stale"]).all()],
            "failed checks": list(worst.index[~worst["ok"].to_numpy()]),
            "worst first": list(worst.sort_values(["ok", "kept"], kind="stable", na_position="first").index),
        }

    def record(self, made: decisions.Decision) -> None:
        """Apply a decision this app just wrote without re-reading the output (``reload`` reads everything again,
        other reviewers' decisions included): its output's state, and the undecided queue without its edit."""
        key = (made.item_id, made.edit_id)
        at = self.rows.index.get_locs(list(key))
        hit = at[(self.rows["preset_hash"].to_numpy()[at] == made.preset_hash)]
        state = decisions.STATE_OF[made.decision]
        for column, value in (("review_state", state), ("decision", made.decision), ("reviewer", made.reviewer),
                              ("decided_at", made.decided_at), ("note", made.note), ("redo_preset", made.redo_preset),
                              ("override_checks", made.override_checks), ("png_sha256", made.png_sha256)):
            self.rows.iloc[hit, self.rows.columns.get_loc(column)] = value
        if key in self._order["undecided"]:
            self._order["undecided"].remove(key)

    def __len__(self) -> int:
        return len(self._order["all"])

    def count(self, queue: str) -> int:
        return len(self._order[queue])

    def keys(self, queue: str = "all", page: int = 0) -> list[tuple[str, str]]:
        if queue not in QUEUES:
            raise ValueError(f"queue {queue!r} is not one of {', '.join(QUEUES)}")
        return self._order[queue][page * PAGE:(page + 1) * PAGE]

    def pages(self, queue: str = "all") -> int:
        return max(1, math.ceil(self.count(queue) / PAGE))

    def card(self, item_id: str, edit_id: str) -> Card:
        try:
            sel = self.rows.loc[[(item_id, edit_id)]]
        except KeyError:
            raise KeyError(f"{item_id}/{edit_id}: no current ok output in {self.output}") from None
        outputs = [Output(preset_hash=r["preset_hash"], preset=r["preset"] or "", strength=_number(r["adapter_scale"]),
                          edit_uri=r["edit_uri"], kept_db=_number(r["kept_db"]), change=_number(r["edit_change"]),
                          landed=r["auto_reason"] if isinstance(r["auto_reason"], str) else "",
                          fill=r["region_fill"] if isinstance(r["region_fill"], str) else "",
                          state=r["review_state"], failed=_text(r["checks_failed"]),
                          checks=checks.words(_text(r["checks_failed"]), _text(r["checks"]) or None,
                                              _profile(r["checks_profile"]))) for _, r in sel.iterrows()]
        outputs.sort(key=lambda o: (o.strength is None, o.strength or 0.0, o.preset))
        first = sel.iloc[0]
        return Card(item_id, edit_id, first["edit_prompt"] or "", first["image_uri"], tuple(outputs))

    def row(self, item_id: str, edit_id: str, preset_hash: str) -> pd.Series:
        """The scores row of one output (what ``decisions.Decision.about`` records a decision on)."""
        sel = self.rows.loc[[(item_id, edit_id)]]
        return sel[sel["preset_hash"] == preset_hash].iloc[0]
