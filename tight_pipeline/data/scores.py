"""The ``scores/`` dataset: one Parquet row per (preset, item, edit) and attempt, written by the workers.

Layout under an output prefix::

    <output>/scores/<run_id>/part-<worker>-<n>.parquet     one file per batch of items, written atomically
    <output>/scores/scores.parquet                          (older versions: one compacted file; still read)

Every file has ``SCHEMA``. Read it as one dataset with any Parquet reader; a key that was redone has several
rows, and the latest ``finished_at`` wins::

    duckdb -c "SELECT * FROM read_parquet('out/scores/**/*.parquet') QUALIFY row_number() OVER
               (PARTITION BY preset_hash, item_id, edit_id ORDER BY finished_at DESC) = 1"
    pandas:  tight_pipeline.data.scores.read_latest("out")   (or pd.read_parquet("out/scores") + sort + drop_duplicates)

Resume is an anti-join on the key columns and each edit's ``request_digest`` (``done_keys``: what the manifest asked
of it, ``Item.request_digest``): the driver never loads score columns to plan.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tight_pipeline.data import storage

KEY = ["preset_hash", "item_id", "edit_id"]
SCORE_COLUMNS = [
    "psnr_vs_input", "ssim_vs_input", "psnr_vs_vae", "ssim_vs_vae", "vae_psnr_vs_input",
    "edit_change", "edit_psnr_vs_input", "clip_score", "lpips_vs_input",
]
TIME_COLUMNS = ["time_fetch_s", "time_encode_s", "time_invert_s", "time_denoise_s", "time_write_s", "time_total_s"]
# Automatic strength (method/auto/strength.py): the scale each edit got (a fixed preset's edit_scale otherwise), the
# checks' scores at that scale, why it was chosen, the judge (clip | diffusion), every tried scale (JSON) and how
# many rival prompts the landed check weighed the edit prompt against (method/auto/rivals.py).
AUTO_COLUMNS = [("adapter_scale", pa.float64()), ("auto_landed", pa.float64()), ("auto_kept_db", pa.float64()),
                ("auto_reason", pa.string()), ("auto_judge", pa.string()), ("auto_candidates", pa.string()),
                ("auto_rivals", pa.int64()), ("time_judge_s", pa.float64())]
# The region of each edit (method/region.py): its source (given | auto | whole), the share of the photo it covers,
# the fill used inside it (edit | detail | recolour), PSNR vs the photo at its own size outside and inside it, the region as a
# picture, the output's size and the time the composite took.
REGION_COLUMNS = [("region_source", pa.string()), ("region_fraction", pa.float64()), ("region_fill", pa.string()),
                  ("psnr_outside_region", pa.float64()), ("psnr_inside_region", pa.float64()),
                  ("region_uri", pa.string()), ("output_width", pa.int64()), ("output_height", pa.int64()),
                  ("time_region_s", pa.float64())]
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
        *AUTO_COLUMNS,
        # where the item ran: the Ray node's id and the GPU ids Ray gave its actor ("" = none)
        ("node_id", pa.string()), ("gpu_ids", pa.string()),
        *REGION_COLUMNS,
        # what the manifest asked of the edit (Item.request_digest; null on rows written before it was recorded) and
        # the sha256 of the photo's bytes the worker read (null on error rows before the fetch and on older rows)
        ("request_digest", pa.string()), ("image_sha256", pa.string()),
        # the automatic checks (data/checks.py): the profile, the checks failed ("" = none; null = not checked: older
        # rows) and what was measured (JSON)
        ("checks_profile", pa.string()), ("checks_failed", pa.string()), ("checks", pa.string()),
    ]
)


def prefix(output: str) -> str:
    return storage.join(output, "scores")


class UnknownColumns(ValueError):
    """Rows carry a column ``SCHEMA`` does not have (a misspelt name would otherwise vanish from the dataset)."""


def rows_to_table(rows: pd.DataFrame | list[dict]) -> pa.Table:
    """Rows as a table of ``SCHEMA``: a column the schema lacks is an error, one it has and the rows lack is null."""
    names = set(rows.columns) if isinstance(rows, pd.DataFrame) else {k for r in rows for k in r}
    unknown = sorted(names - set(SCHEMA.names))
    if unknown:
        raise UnknownColumns(f"score rows carry columns the scores schema does not have: {unknown}")
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    frame = frame.reindex(columns=SCHEMA.names)
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)


def write_part(output: str, run_id: str, rows: list[dict], tag: str = "") -> str | None:
    """Write ``rows`` as one new Parquet part of this run (atomic); returns its URL (None for no rows)."""
    if not rows:
        return None
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows), buf)
    url = storage.join(prefix(output), run_id, f"part-{tag or 'x'}-{uuid.uuid4().hex[:12]}.parquet")
    storage.write_bytes_atomic(url, buf.getvalue())
    return url


def dataset(output: str) -> pads.Dataset | None:
    """Every Parquet file under ``<output>/scores/`` as one dataset (None when there is none yet)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(prefix(output))
    try:
        files = storage.with_retries(lambda: fs.find(path), "listing the scores dataset")
    except FileNotFoundError:
        return None
    files = sorted(f for f in files if f.endswith(".parquet") and "/_" not in f[len(path):] and "/." not in f[len(path):])
    if not files:
        return None
    return pads.dataset(files, schema=SCHEMA, format="parquet", filesystem=fs)


def read(output: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """Rows of the dataset (all attempts), only ``columns``, optionally filtered (a pyarrow expression)."""
    ds = dataset(output)
    if ds is None:
        return SCHEMA.empty_table().select(columns) if columns else SCHEMA.empty_table()
    return ds.to_table(columns=columns, filter=filter)


def head(output: str, n: int, columns: list[str] | None = None, filter=None) -> pd.DataFrame:
    """The first ``n`` matching rows (current ones among them), reading no more than needed."""
    ds = dataset(output)
    if ds is None:
        return SCHEMA.empty_table().to_pandas()
    return latest(ds.scanner(columns=columns, filter=filter).head(n).to_pandas())


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per key: the latest ``finished_at``."""
    frame = frame.sort_values("finished_at", kind="stable").drop_duplicates(KEY, keep="last")
    return frame.reset_index(drop=True)


def read_latest(output: str, columns: list[str] | None = None, filter=None) -> pd.DataFrame:
    """The current row of every key (pandas), with ``columns`` (the key and ``finished_at`` are always read)."""
    cols = None if columns is None else list(dict.fromkeys(KEY + ["finished_at"] + list(columns)))
    return latest(read(output, cols, filter).to_pandas())


def key_hashes(preset_hash, item_id, edit_id, count: int = -1, request=None) -> np.ndarray:
    """64-bit hashes of keys, or of keys and request digests (``request``) — this process only: Python's string
    hash is salted per process."""
    if request is None:
        return np.fromiter((hash((p, i, e)) for p, i, e in zip(preset_hash, item_id, edit_id)), dtype=np.int64,
                           count=count)
    return np.fromiter((hash((p, i, e, r)) for p, i, e, r in zip(preset_hash, item_id, edit_id, request)),
                       dtype=np.int64, count=count)


@dataclass(frozen=True)
class DoneKeys:
    """The keys whose latest row is ok and made by the run's model, as sorted 64-bit hashes (``done_keys``).

    ``requests``: of (key, request digest) — a row written before digests were recorded counts with ``None``, i.e.
    done whatever its edit asks now; ``keys``: of the key alone (to tell an edit whose request changed from a new
    one). Memory: 16 bytes per done key."""

    requests: np.ndarray
    keys: np.ndarray
    legacy: bool = False  # some done row has no request digest

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, preset_hash: list, item_id: list, edit_id: list, request) -> tuple[np.ndarray, np.ndarray]:
        """Per edit: (done: its key is done for this very request, changed: its key is done for another request).
        ``request``: the edits' request digests, any iterable — read once, and not at all when nothing is done."""
        n = len(item_id)
        if len(self.keys) == 0:
            return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        done = contains(self.requests, key_hashes(preset_hash, item_id, edit_id, n, request))
        if self.legacy:
            done |= contains(self.requests, key_hashes(preset_hash, item_id, edit_id, n, [None] * n))
        changed = ~done & contains(self.keys, key_hashes(preset_hash, item_id, edit_id, n))
        return done, changed


def done_keys(output: str, digest: str, block: int = 1 << 16) -> DoneKeys:
    """The keys whose latest row is ok and was made with ``digest`` (spec + weights), with their request digests.

    Reads six columns as Arrow and hashes them ``block`` rows at a time (no Python string per stored row is kept):
    memory ~ the columns + 25 bytes per stored row. PNG existence is checked by the workers."""
    table = read(output, KEY + ["request_digest", "status", "model_digest", "finished_at"])
    n = table.num_rows
    if n == 0:
        return DoneKeys(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    good = pc.and_(pc.equal(table["status"], "ok"), pc.equal(table["model_digest"], digest))
    good = good.fill_null(False).to_numpy(zero_copy_only=False)
    # rows in time order as integers (ISO timestamps order as text), computed by Arrow
    t = pc.rank(table["finished_at"].fill_null(""), sort_keys="ascending", tiebreaker="dense").to_numpy()
    unasked = table["request_digest"].is_null().to_numpy(zero_copy_only=False)
    keys, requests = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for start in range(0, n, block):
        part = table.slice(start, block)
        columns = [part[c].to_pylist() for c in KEY]
        keys[start:start + part.num_rows] = key_hashes(*columns, count=part.num_rows)
        requests[start:start + part.num_rows] = key_hashes(*columns, count=part.num_rows,
                                                            request=part["request_digest"].to_pylist())
    del table
    # the latest row of each key decides: order by (key, time), keep each key's last row
    order = np.lexsort((t, keys))
    last = np.ones(n, dtype=bool)
    last[:-1] = keys[order][1:] != keys[order][:-1]
    keep = order[last & good[order]]
    return DoneKeys(np.sort(requests[keep]), np.sort(keys[keep]), legacy=bool(unasked[keep].any()))


def contains(sorted_hashes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Vectorised membership of ``hashes`` in ``sorted_hashes``."""
    if len(sorted_hashes) == 0:
        return np.zeros(len(hashes), dtype=bool)
    pos = np.clip(np.searchsorted(sorted_hashes, hashes), 0, len(sorted_hashes) - 1)
    return sorted_hashes[pos] == hashes

