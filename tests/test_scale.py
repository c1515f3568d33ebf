"""Catalog scale on the passthrough model: streamed manifests, worker-written score parts, resume as an
anti-join, bounded attempts for items that kill their worker, --dry-run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.corpus import image_files
from tight_pipeline.data import scores
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.planner import plan_job
from tight_pipeline.pipeline.job import run_job
from tight_pipeline.data.manifest import iter_manifest, read_manifest


def _write(folder: Path, n: int, poison: set[int] = frozenset(), start: int = 0) -> list[dict]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "img" / "a.png").write_bytes(image_files()["good.png"])
    return [{"item_id": f"sku-{i:05d}", "image_uri": "img/a.png",
             "source_prompt": "!crash on purpose" if i in poison else "a white mug",
             "locales": {"de-DE": "ein Becher", "fr-FR": "une tasse", "ja-JP": "a mug, ja"}} for i in range(start, start + n)]


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_passthrough_run_resume_and_dry_run(tmp_path, ray_session):
    n = 600
    manifest = _jsonl(tmp_path / "in" / "m.jsonl", _write(tmp_path / "in", n))
    config = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), preset="draft", model="passthrough",
                       actor_cpus=0.5, batch_size=64)
    first = run_job(config)
    assert first.counts == {"ok": 3 * n} and first.processed_items == n
    stored = scores.read(str(tmp_path / "out"), scores.KEY).to_pandas()
    assert len(stored) == 3 * n and not stored.duplicated().any()  # each key once, written by the workers
    assert len(list((tmp_path / "out" / "scores" / first.config.run_id).glob("part-*.parquet"))) >= n // 64

    plan = plan_job(config)  # what --dry-run prints
    assert (plan.items, plan.todo_items, plan.candidate_items) == (n, 0, n)
    # a new locale for some items, and a lost PNG: only those are redone
    records = _write(tmp_path / "in", n)
    for r in records[:10]:
        r["locales"]["es-ES"] = "una taza"
    _jsonl(manifest, records)
    lost = tmp_path / "out" / plan.presets["draft"].hash / "sku-00500" / "fr-FR.png"
    lost.unlink()
    second = run_job(config)
    assert second.processed_items == 11 and second.skipped_items == n - 11
    assert second.counts == {"ok": 3 * n + 10} and lost.is_file()
    latest = scores.read_latest(str(tmp_path / "out"))
    assert len(latest) == 3 * n + 10


def test_an_item_that_kills_its_worker_ends_as_an_error_row(tmp_path, ray_session):
    n = 12
    manifest = _jsonl(tmp_path / "in" / "m.jsonl", _write(tmp_path / "in", n, poison={5}))
    config = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), preset="draft", model="passthrough",
                       actor_cpus=0.5, batch_size=4, max_attempts=2)
    result = run_job(config)  # returns: the poison item is not retried forever
    rows = result.rows
    assert result.counts == {"ok": 3 * (n - 1), "error": 3}
    bad = rows[rows["status"] == "error"]
    assert set(bad["item_id"]) == {"sku-00005"}
    assert bad["error"].str.contains("item 'sku-00005': WorkerDied: its worker died 2 times").all()
    assert not rows.duplicated(scores.KEY).any() and len(rows) == 3 * n
    # the poison item's batch-mates were finished one at a time, once
    assert (rows.loc[rows["status"] == "ok", "item_id"].value_counts() == 3).all()


def test_manifest_prefix_of_several_formats_streams_with_row_numbers_across_files(tmp_path):
    folder = tmp_path / "m"
    records = _write(tmp_path, 7)
    folder.mkdir()
    _jsonl(folder / "a.jsonl", records[:3])
    frame = pd.DataFrame(records[3:5]).assign(locales=lambda d: d["locales"].map(json.dumps))
    frame.to_csv(folder / "b.csv", index=False)
    dup = dict(records[0], image_uri="img/a.png")  # sku-00000 again: a duplicate across files
    pd.DataFrame([{**r, "locales": json.dumps(r["locales"])} for r in records[5:] + [dup]]).to_parquet(folder / "c.parquet")
    (folder / "notes.txt").write_text("ignored")
    chunks = list(iter_manifest(str(folder) + "/", chunk_rows=2))
    items = [i for c in chunks for i in c.items]
    invalid = [b for c in chunks for b in c.invalid]
    assert [i.item_id for i in items] == [f"sku-{k:05d}" for k in range(7)]
    assert [i.row for i in items] == list(range(1, 8))
    assert len(invalid) == 1 and invalid[0].row == 8 and "duplicate item_id (first seen at row 1)" in invalid[0].reason
    assert items[3].image_uri == str(folder / "img/a.png")  # relative to the file that names it
    assert read_manifest(str(folder) + "/").n_rows == 8
    with pytest.raises(Exception, match="holds no .jsonl"):
        read_manifest(str(tmp_path / "empty") + "/")


def test_done_keys_follow_the_latest_row_and_the_model(tmp_path):
    out = str(tmp_path / "out")

    def row(item, status, digest, t):
        return {"preset_hash": "p", "item_id": item, "edit_id": "e", "status": status, "model_digest": digest,
                "finished_at": t}

    scores.write_part(out, "r1", [row("a", "ok", "m1", "1"), row("b", "error", "m1", "1"), row("c", "ok", "m1", "1"),
                                  row("d", "ok", "m0", "1")])
    scores.write_part(out, "r2", [row("b", "ok", "m1", "2"), row("c", "error", "m1", "2")])
    done = scores.done_keys(out, "m1")
    h = scores.key_hashes(["p"] * 4, ["a", "b", "c", "d"], ["e"] * 4)
    assert scores.contains(done, h).tolist() == [True, True, False, False]
    assert len(scores.read_latest(out)) == 4 and len(scores.read(out, scores.KEY)) == 6


def test_dry_run_prints_counts_without_starting_services(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", _write(tmp_path, 5) + [{"item_id": "../x"}])
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--manifest", str(manifest), "--output",
                           str(tmp_path / "out"), "--model", "passthrough", "--preset", "draft", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 items, 1 invalid rows" in proc.stdout
    assert [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("draft")] == [["draft", "5", "0", "1"]]
    assert "invalid: manifest row 6" in proc.stderr and "rival" not in proc.stdout  # no auto item: no rivals
    assert not (tmp_path / "out").exists()  # nothing written, no Ray, no Prefect


def test_the_plan_collects_the_rivals_of_auto_items_from_the_whole_manifest(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image_files()["good.png"])
    records = [{"item_id": f"sku-{i}", "image_uri": "img/a.png", "source_prompt": f"a {src} mug", "preset": "auto",
                "edits": [{"edit_id": "c", "prompt": f"a {dst} mug"}]}
               for i, (src, dst) in enumerate([("red", "teal"), ("red", "blue"), ("green", "teal")])]
    records.append({"item_id": "fixed", "image_uri": "img/a.png", "source_prompt": "a grey mug",  # no search: no rival
                    "edits": [{"edit_id": "c", "prompt": "a pink mug"}]})
    config = JobConfig(manifest=str(_jsonl(tmp_path / "m.jsonl", records)), output=str(tmp_path / "out"),
                       preset="draft", model="passthrough")
    plan = plan_job(config)
    assert plan.vocabulary == {"red": 2, "teal": 2, "blue": 1, "green": 1}
    assert plan.rivals == ("red", "teal", "blue", "green")  # most frequent first: what every worker is given
    assert plan_job(dataclasses.replace(config, preset="auto")).rivals[-2:] == ("grey", "pink")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--manifest", config.manifest, "--output",
                           config.output, "--model", "passthrough", "--preset", "draft", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert "against 4 rival phrases of this manifest: red, teal, blue, green" in proc.stdout, proc.stdout
