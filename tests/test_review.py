"""Decisions as data and publishing only what was approved (tight_pipeline/review/): on an output written the way a
run writes one (scores parts + PNGs), no model needed."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from tight_pipeline.data import scores, storage
from tight_pipeline.review import decisions
from tight_pipeline.review.publish import publish


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return storage.encode_png(Image.fromarray(pixels))


def _output(tmp_path, items=("a", "b", "c", "d"), preset_hash="h1", scale=1.0, seed=0):
    out = str(tmp_path / "out")
    rows = []
    for i, item in enumerate(items):
        uri = storage.output_key(out, preset_hash, item, "blue")
        storage.write_bytes_atomic(uri, _png(seed + i))
        rows.append({"item_id": item, "edit_id": "blue", "preset": f"balanced@{scale}", "preset_hash": preset_hash,
                     "status": "ok", "edit_uri": uri, "image_uri": f"photos/{item}.jpg", "image_sha256": "ab" * 32,
                     "adapter_scale": scale, "finished_at": f"2026-12-07T10:00:0{i}+00:00"})
    scores.write_part(out, "run1", rows)
    return out


def _rows(out):
    frame = scores.read_latest(out, ["status", "edit_uri", "preset", "adapter_scale"])
    return {(r.preset_hash, r.item_id): r for _, r in frame.iterrows()}


def three_photos(tmp_path, monkeypatch, env: dict):
    """Three random photos and a manifest asking one edit of each under ``tmp_path/in``; ``env`` (the session's
    Prefect and Ray) set for the CLI, as a deployment sets it. Returns the folder (``manifest.jsonl`` in it)."""
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    lines = []
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
        lines.append(json.dumps({"item_id": f"p{i}", "image_uri": f"p{i}.png", "source_prompt": "a mug",
                                 "edits": [{"edit_id": "blue", "prompt": "a blue mug"}]}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return folder


def _sha(uri):
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def test_publish_copies_exactly_the_approved_outputs_and_a_second_publish_copies_nothing(tmp_path):
    out = _output(tmp_path)
    rows = _rows(out)
    decisions.write(out, [decisions.Decision.about(rows["h1", "a"], "approve", "ana"),
                          decisions.Decision.about(rows["h1", "b"], "reject", "ana"),
                          decisions.Decision.about(rows["h1", "c"], "redo", "ana", redo_preset="balanced@0.6")])
    to = str(tmp_path / "shop")
    first = publish(out, to)
    assert (first.copied, first.unchanged) == (1, 0)
    assert first.skipped == {"rejected": 1, "redo": 1, "undecided": 1}
    assert _sha(f"{to}/a/blue.png") == _sha(rows["h1", "a"].edit_uri)
    assert not any(storage.exists(f"{to}/{x}/blue.png") for x in "bcd")
    listed = pq.read_table(f"{to}/published.parquet").to_pandas()
    assert list(listed["item_id"]) == ["a"] and listed.loc[0, "approved_by"] == "ana"
    assert listed.loc[0, "png_sha256"] == _sha(rows["h1", "a"].edit_uri) and listed.loc[0, "adapter_scale"] == 1.0
    before = storage.read_bytes(f"{to}/published.parquet")
    second = publish(out, to)
    assert (second.copied, second.unchanged) == (0, 1) and not second.withdrawn
    assert storage.read_bytes(f"{to}/published.parquet") == before  # nothing rewritten either
    decisions.write(out, [decisions.Decision.about(rows["h1", "a"], "reject", "ben", note="label smeared")])
    third = publish(out, to)
    assert third.copied == 0 and third.withdrawn == ["a/blue"]  # said, never silently deleted
    assert any("no longer approved" in line and "a/blue" in line for line in third.lines())


def test_a_decision_on_an_output_re_rendered_since_is_stale_and_never_published(tmp_path):
    out = _output(tmp_path, items=("a",))
    row = _rows(out)["h1", "a"]
    decisions.write(out, [decisions.Decision.about(row, "approve", "ana")])
    assert list(decisions.with_state(out, scores.read_latest(out, ["status", "edit_uri"]))["review_state"]) == ["approved"]
    storage.write_bytes_atomic(row.edit_uri, _png(99))  # another run re-rendered it under the same key
    state = decisions.with_state(out, scores.read_latest(out, ["status", "edit_uri"]))
    assert list(state["review_state"]) == ["stale"]
    summary = publish(out, str(tmp_path / "shop"))
    assert summary.copied == 0 and summary.skipped == {"stale": 1}
    assert not storage.exists(str(tmp_path / "shop" / "a" / "blue.png"))


def test_two_reviewers_at_once_both_keep_their_decisions_and_the_latest_wins_per_output(tmp_path):
    out = _output(tmp_path, items=tuple(f"i{k}" for k in range(6)))
    rows = list(_rows(out).values())
    barrier = threading.Barrier(2)

    def review(name, decision):
        made = [decisions.Decision.about(r, decision, name) for r in rows]
        barrier.wait()
        for d in made:  # one part per decision, written as fast as they come
            decisions.write(out, [d])

    threads = [threading.Thread(target=review, args=("ana", "approve")),
               threading.Thread(target=review, args=("ben", "reject"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = decisions.read_all(out)
    assert len(everything) == 12 and set(everything["reviewer"]) == {"ana", "ben"}
    now = decisions.current(out)
    assert len(now) == 6
    for _, d in now.iterrows():  # each output's current decision is the later of the two
        both = everything[everything["item_id"] == d["item_id"]]
        assert d["decided_at"] == both["decided_at"].max()


def test_a_later_approval_at_another_strength_replaces_the_published_png(tmp_path):
    out = _output(tmp_path, items=("a",), preset_hash="h1", scale=1.0)
    scores.write_part(out, "run2", [])
    storage.write_bytes_atomic(storage.output_key(out, "h2", "a", "blue"), _png(7))
    scores.write_part(out, "run2", [{"item_id": "a", "edit_id": "blue", "preset": "balanced@0.6", "preset_hash": "h2",
                                     "status": "ok", "edit_uri": storage.output_key(out, "h2", "a", "blue"),
                                     "image_uri": "photos/a.jpg", "adapter_scale": 0.6,
                                     "finished_at": "2026-12-07T11:00:00+00:00"}])
    rows = _rows(out)
    to = str(tmp_path / "shop")
    decisions.write(out, [decisions.Decision.about(rows["h1", "a"], "approve", "ana")])
    assert publish(out, to).copied == 1
    decisions.write(out, [decisions.Decision.about(rows["h2", "a"], "approve", "ana")])
    summary = publish(out, to)
    assert summary.copied == 1 and summary.superseded == 1
    assert _sha(f"{to}/a/blue.png") == _sha(rows["h2", "a"].edit_uri)
    listed = pq.read_table(f"{to}/published.parquet").to_pandas()
    assert len(listed) == 1 and listed.loc[0, "adapter_scale"] == 0.6


def test_bad_decisions_are_one_line_errors():
    row = {"item_id": "a", "edit_id": "blue", "status": "error", "edit_uri": None, "preset_hash": "h"}
    with pytest.raises(decisions.DecisionError, match="a/blue: only an output that was written"):
        decisions.Decision.about(row, "approve", "ana")
    ok = row | {"status": "ok", "edit_uri": "x.png", "preset": "p", "adapter_scale": 1.0}
    with pytest.raises(decisions.DecisionError, match="'maybe' is not one of approve, reject, redo"):
        decisions.Decision.about(ok, "maybe", "ana", png_sha256="0" * 64)
    with pytest.raises(decisions.DecisionError, match="needs a reviewer"):
        decisions.Decision.about(ok, "approve", " ", png_sha256="0" * 64)


def test_decide_and_publish_from_the_command_line(tmp_path):
    from flows.cli import app

    out = _output(tmp_path, items=("a", "b"))
    runner = CliRunner()
    done = runner.invoke(app, ["decide", "--output", out, "--item", "a/blue", "--decision", "approve",
                               "--reviewer", "ana", "--note", "label sharp"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("approve: a/blue")
    missing = runner.invoke(app, ["decide", "--output", out, "--item", "zz", "--decision", "approve",
                                  "--reviewer", "ana"])
    assert missing.exit_code == 2 and "--item zz: no current ok output" in missing.output
    shop = str(tmp_path / "shop")
    first = runner.invoke(app, ["publish", "--output", out, "--to", shop])
    assert first.exit_code == 0 and "published 1 new or changed, 0 already in place" in first.output
    assert "not published: 1 undecided" in first.output
    again = runner.invoke(app, ["publish", "--output", out, "--to", shop])
    assert "published 0 new or changed, 1 already in place" in again.output
    assert decisions.current(out).loc[0, "note"] == "label sharp"


@pytest.mark.drill  # end to end through Ray and Prefect: make drills (the browser drill runs the same loop)
def test_the_loop_sweep_decide_redo_publish(tmp_path, tiny_model_dir, prefect_env, ray_env, monkeypatch):
    """A run on three photos at two strengths (one job); one edit approved, one rejected, one asked again at another
    strength; `redo` renders it into the same output beside the old ones; `publish` writes exactly the approved PNG,
    and again nothing."""

    from flows.cli import app

    folder = three_photos(tmp_path, monkeypatch, {**prefect_env, **ray_env})
    out, shop = str(tmp_path / "out"), str(tmp_path / "shop")
    runner = CliRunner()
    sweep = ["--manifest", str(folder / "manifest.jsonl"), "--output", out, "--preset", "smoke", "--model",
             str(tiny_model_dir), "--strengths", "0.2,1"]
    first = runner.invoke(app, ["run", *sweep])  # every photo at two strengths, in one job
    assert first.exit_code == 0, first.output[-3000:]
    rendered = scores.read_latest(out)
    assert len(rendered) == 6 and (rendered["status"] == "ok").all()
    assert sorted(set(rendered["preset"])) == ["smoke@0.2", "smoke@1"]
    assert sorted(set(rendered["adapter_scale"])) == [0.2, 1.0] and rendered["preset_hash"].nunique() == 2
    planned = runner.invoke(app, ["run", *sweep, "--dry-run"])  # the sweep resumes like any run: all done
    assert planned.exit_code == 0 and planned.output.count("         0          0            3") == 2, planned.output
    one = rendered[rendered["preset"] == "smoke@1"].iloc[0]["preset_hash"]
    for item, decision, extra in (("p0", "approve", []), ("p1", "reject", []),
                                  ("p2", "redo", ["--redo-preset", "smoke@0.9", "--note", "stronger"])):
        done = runner.invoke(app, ["decide", "--output", out, "--item", f"{item}/blue", "--decision", decision,
                                   "--reviewer", "ana", "--preset-hash", one, *extra])
        assert done.exit_code == 0, done.output
    again = runner.invoke(app, ["redo", "--output", out, "--model", str(tiny_model_dir)])
    assert again.exit_code == 0, again.output[-3000:]
    assert "1 edits to redo" in again.output
    rows = scores.read_latest(out)
    p2 = rows[rows["item_id"] == "p2"].sort_values("preset")
    assert list(p2["preset"]) == ["smoke@0.2", "smoke@0.9", "smoke@1"] and (p2["status"] == "ok").all(), again.output
    assert len(rows) == 7  # the old ones stay beside the new one
    published = runner.invoke(app, ["publish", "--output", out, "--to", shop])
    assert published.exit_code == 0 and "published 1 new or changed" in published.output, published.output
    p0 = rows[(rows["item_id"] == "p0") & (rows["preset_hash"] == one)].iloc[0]
    assert _sha(f"{shop}/p0/blue.png") == _sha(p0["edit_uri"])
    assert sorted(p.name for p in (tmp_path / "shop").rglob("*.png")) == ["blue.png"]
    listed = pq.read_table(f"{shop}/published.parquet").to_pandas()
    assert list(listed["item_id"]) == ["p0"]
    assert "published 0 new or changed, 1 already in place" in runner.invoke(
        app, ["publish", "--output", out, "--to", shop]).output
    # The review is mirrored onto the MLflow run that wrote the outputs: counts as tags, the decisions as a table.
    import json as _json

    from tight_pipeline.reporting import tracking

    client = tracking.connect().MlflowClient()
    exp = client.get_experiment_by_name("tight-pipeline")
    first_run = rendered["run_id"].iloc[0]
    run = client.search_runs([exp.experiment_id], f"tags.run_id = '{first_run}'")[0]
    tags = run.data.tags
    assert (tags["review.approved"], tags["review.rejected"], tags["review.redo"], tags["review.undecided"]) == \
        ("1", "1", "1", "3"), tags
    table = _json.loads(open(client.download_artifacts(run.info.run_id, "review/decisions.json",
                                                       str(tmp_path))).read())
    assert len(table["data"]) == 6 and "review_state" in table["columns"]
    assert (rows["checks_profile"] == "basic").all() and (rows["checks_failed"] == "").all()  # every output checked
    same = runner.invoke(app, ["decide", "--output", out, "--item", "p1/blue", "--decision", "redo",
                               "--reviewer", "ana", "--preset-hash", one, "--redo-preset", "smoke@1.0"])
    assert same.exit_code == 2 and "renders the same output" in same.output
