"""Catalog scale on the passthrough model: streamed manifests, worker-written score parts, resume as an
anti-join, bounded attempts for items that kill their worker, --dry-run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    stored = scores.read(str(tmp_path / "out"), scores.KEY + ["checks_profile", "checks_failed", "checks"]).to_pandas()
    assert len(stored[scores.KEY]) == 3 * n and not stored[scores.KEY].duplicated().any()  # each key once, by workers
    # every output measured by the run's automatic checks (basic: the photo's size; no region to keep outside)
    assert (stored["checks_profile"] == "basic").all() and (stored["checks_failed"] == "").all()
    assert stored["checks"].map(lambda text: json.loads(text)["size"]).map(tuple).nunique() == 1
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


def test_resume_redoes_changed_requests_and_with_recheck_replaced_photos(tmp_path, ray_session):
    import hashlib

    from tight_pipeline.data.manifest import read_manifest

    folder = tmp_path / "in"
    records = _write(folder, 6)
    (folder / "img" / "own.png").write_bytes(image_files()["gray.png"])
    records[5]["image_uri"] = "img/own.png"
    from PIL import Image

    size = Image.open(folder / "img" / "a.png").size
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    mask.save(folder / "img" / "mask.png")
    records[2]["mask_uri"] = "img/mask.png"
    manifest = _jsonl(folder / "m.jsonl", records)
    out = tmp_path / "out"
    config = JobConfig(manifest=str(manifest), output=str(out), preset="draft", model="passthrough",
                       actor_cpus=0.5, batch_size=4)
    first = run_job(config)
    assert first.processed_items == 6 and first.counts == {"ok": 18}
    items = {i.item_id: i for i in read_manifest(str(manifest)).items}
    rows = first.rows.set_index(["item_id", "edit_id"])
    for item in items.values():  # each row records what its edit asked and which photo bytes it was made from
        photo = (folder / "img" / ("own.png" if item.item_id == "sku-00005" else "a.png")).read_bytes()
        for e in item.edits:
            assert rows.loc[(item.item_id, e.edit_id), "request_digest"] == item.request_digest(e)
            assert rows.loc[(item.item_id, e.edit_id), "image_sha256"] == hashlib.sha256(photo).hexdigest()
    folder5 = out / first.plan.presets["draft"].hash / "sku-00005"
    assert json.loads((folder5 / "source.json").read_text())["image_sha256"] == hashlib.sha256(
        (folder / "img" / "own.png").read_bytes()).hexdigest()

    # Same ids, other requests: one locale's prompt, one item's photo URI, one item's source prompt.
    records[1]["locales"]["de-DE"] = "ein roter Becher"
    records[3]["image_uri"] = "img/own.png"
    records[4]["source_prompt"] = "a white cup"
    _jsonl(manifest, records)
    plan = plan_job(config)
    assert (plan.todo_items, plan.candidate_items, plan.changed_items, plan.changed_edits) == (3, 3, 3, 7)
    assert plan.changed_sample == ["sku-00001", "sku-00003", "sku-00004"]
    assert plan.by_preset["draft"]["changed"] == 3
    second = run_job(config)
    assert second.processed_items == 3 and second.counts == {"ok": 18}
    latest = second.rows.set_index(["item_id", "edit_id"])
    assert latest.loc[("sku-00001", "de-DE"), "edit_prompt"] == "ein roter Becher"
    assert latest.loc[("sku-00001", "de-DE"), "run_id"] == second.config.run_id
    assert latest.loc[("sku-00003", "fr-FR"), "image_sha256"] == latest.loc[("sku-00005", "fr-FR"), "image_sha256"]
    assert latest.loc[("sku-00000", "fr-FR"), "run_id"] == first.config.run_id  # unchanged: left as it was
    assert len(scores.read_latest(str(out))) == 18

    # A photo replaced at the same URI: the plan cannot see it; --recheck-photos reads the done items' photos.
    (folder / "img" / "own.png").write_bytes(image_files()["palette.png"])
    assert run_job(config).processed_items == 0
    recheck = dataclasses.replace(config, recheck_photos=True, run_id="")
    third = run_job(recheck)
    assert third.processed_items == 2 and third.counts == {"ok": 18}
    new_sha = hashlib.sha256((folder / "img" / "own.png").read_bytes()).hexdigest()
    redone = third.rows[third.rows["run_id"] == third.config.run_id]
    assert sorted(set(redone["item_id"])) == ["sku-00003", "sku-00005"] and set(redone["image_sha256"]) == {new_sha}
    assert json.loads((folder5 / "source.json").read_text())["image_sha256"] == new_sha
    # a mask replaced at the same URI: seen by --recheck-photos too
    assert json.loads((out / first.plan.presets["draft"].hash / "sku-00002" / "source.json").read_text())["masks"]
    mask.paste(255, (0, 0, size[0], size[1] // 2))
    mask.save(folder / "img" / "mask.png")
    assert run_job(config).processed_items == 0
    fourth = run_job(recheck)
    assert fourth.processed_items == 1
    assert set(fourth.rows.loc[fourth.rows["run_id"] == fourth.config.run_id, "item_id"]) == {"sku-00002"}
    # outputs without a record of their photo (an older version's) cannot be checked: redone under --recheck-photos
    (out / first.plan.presets["draft"].hash / "sku-00000" / "source.json").unlink()
    assert run_job(recheck).processed_items == 1
    assert run_job(recheck).processed_items == 0


def test_an_item_that_kills_its_worker_ends_as_an_error_row(tmp_path, ray_session):
    n = 12
    manifest = _jsonl(tmp_path / "in" / "m.jsonl", _write(tmp_path / "in", n, poison={5}))
    # the passthrough engine, except that a "!crash" prompt kills its worker: a test engine, loaded by the spec
    spec = tmp_path / "crash-passthrough.yaml"
    spec.write_text("name: crash-passthrough\nfamily: passthrough\nbase: none\nresolution: 64\n"
                    "engine: tight_pipeline.testing.engines:CrashingPassthrough\n")
    config = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), preset="draft", model=str(spec),
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


def test_a_write_that_fails_beside_other_batches_ends_as_that_item_s_error_row(tmp_path, ray_session):
    """Batches overlap in an actor (actor_pipeline=3: one on the model, others fetching or writing): a write that
    fails ends as that item's error rows; no row is lost or written twice, the other items are untouched."""
    from tight_pipeline.method.presets import load_preset

    n = 5
    manifest = _jsonl(tmp_path / "in" / "m.jsonl", _write(tmp_path / "in", n))
    out = tmp_path / "out"
    blocked = out / load_preset("draft").hash / "sku-00004"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the item's folder must go")  # every write of that item fails
    config = JobConfig(manifest=str(manifest), output=str(out), preset="draft", model="passthrough",
                       actor_cpus=1.0, batch_size=1, actor_pipeline=3)
    rows = run_job(config).rows
    assert len(rows) == 3 * n and not rows.duplicated(scores.KEY).any()
    bad = rows[rows["status"] == "error"]
    assert set(bad["item_id"]) == {"sku-00004"} and len(bad) == 3
    assert bad["error"].str.startswith("item 'sku-00004': ").all()
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == 3 * (n - 1) and all(Path(u).is_file() for u in ok["edit_uri"])
    # The photo is stored as it is decoded: no input.png copy of it; the rows point at the photo itself.
    assert set(ok["input_uri"]) == {str(tmp_path / "in" / "img" / "a.png")}
    assert not list(out.glob("*/*/input.png"))


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


def test_done_keys_follow_the_latest_row_the_model_and_the_request(tmp_path):
    out = str(tmp_path / "out")

    def row(item, status, digest, t, request="r"):
        return {"preset_hash": "p", "item_id": item, "edit_id": "e", "status": status, "model_digest": digest,
                "finished_at": t, "request_digest": request}

    scores.write_part(out, "r1", [row("a", "ok", "m1", "1"), row("b", "error", "m1", "1"), row("c", "ok", "m1", "1"),
                                  row("d", "ok", "m0", "1"), row("e", "ok", "m1", "1", "old"),
                                  row("f", "ok", "m1", "1", None)])
    scores.write_part(out, "r2", [row("b", "ok", "m1", "2"), row("c", "error", "m1", "2"), row("e", "ok", "m1", "2")])
    done = scores.done_keys(out, "m1")
    assert len(done) == 4 and done.legacy  # a, b, e, f; f's row predates request digests
    small = scores.done_keys(out, "m1", block=2)  # hashed in blocks of 2 rows: the same sets
    assert np.array_equal(small.keys, done.keys) and np.array_equal(small.requests, done.requests)
    ids = ["a", "b", "c", "d", "e", "f"]
    found, changed = done.lookup(["p"] * 6, ids, ["e"] * 6, ["r"] * 6)
    assert found.tolist() == [True, True, False, False, True, True]
    assert not changed.any()
    # another request under the same ids: done keys become "changed" (to do), except the digest-less row, which
    # stays done whatever its edit asks now
    found, changed = done.lookup(["p"] * 6, ids, ["e"] * 6, ["r2"] * 6)
    assert found.tolist() == [False, False, False, False, False, True]
    assert changed.tolist() == [True, True, False, False, True, False]
    assert len(scores.read_latest(out)) == 6 and len(scores.read(out, scores.KEY)) == 9
    empty = scores.done_keys(str(tmp_path / "none"), "m1")
    assert len(empty) == 0 and empty.lookup(["p"], ["a"], ["e"], ["r"])[0].tolist() == [False]


def test_request_digest_covers_what_an_edit_asks_and_nothing_else():
    from tight_pipeline.data.manifest import Edit, Item, request_digest

    item = Item(1, "sku", "s3://b/a.png", "a mug", (Edit("de", "ein Becher"), Edit("fr", "une tasse", "s3://b/m.png")),
                metadata={"sku": "1"}, mask_uri="s3://b/item.png")
    de, fr = item.edits
    base = item.request_digest(de)
    assert len(base) == 16 and base == request_digest("s3://b/a.png", "a mug", "ein Becher", "s3://b/item.png", None)
    assert item.request_digest(fr) == request_digest("s3://b/a.png", "a mug", "une tasse", "s3://b/m.png", None)
    changed = [dataclasses.replace(item, image_uri="s3://b/b.png"), dataclasses.replace(item, source_prompt="a cup"),
               dataclasses.replace(item, mask_uri=None), dataclasses.replace(item, edits=(Edit("de", "ein Krug"),)),
               dataclasses.replace(item, edits=(Edit("de", "ein Becher", region="auto"),))]
    assert all(c.request_digest(c.edits[0]) != base for c in changed)
    # ids, row number, preset and metadata are not what the edit asks
    same = dataclasses.replace(item, row=9, preset="faithful", metadata={})
    assert same.request_digest(de) == base
    # fields cannot run into each other
    assert request_digest("a", "b c", "d", None, None) != request_digest("a", "b", "c d", None, None)


def test_dry_run_prints_counts_without_starting_services(tmp_path):
    manifest = _jsonl(tmp_path / "m.jsonl", _write(tmp_path, 5) + [{"item_id": "../x"}])
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--manifest", str(manifest), "--output",
                           str(tmp_path / "out"), "--model", "passthrough", "--preset", "draft", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 items, 1 invalid rows" in proc.stdout
    assert [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("draft")] == [["draft", "5", "0", "0", "1"]]
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
