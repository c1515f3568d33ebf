"""The command line as users run it: `edit` on one photo, `run` over the bad-input corpus."""

from __future__ import annotations

from tight_pipeline.data import scores

import json
import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import pandas as pd
from PIL import Image

from tight_pipeline.method.presets import load_preset

from tests.corpus import image_files, write_corpus

CLI = [sys.executable, "-m", "flows.cli"]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="tpr", dir="/tmp")  # short: Ray's socket paths are length-limited
    env.pop("AWS_ENDPOINT_URL", None)
    return env


@pytest.mark.slow
def test_edit_writes_images_sheet_and_scores(tmp_path, tiny_model_dir, photo):
    photo.save(tmp_path / "coffee.jpg")
    out = tmp_path / "out"
    proc = subprocess.run(CLI + ["edit", str(tmp_path / "coffee.jpg"), "--source-prompt", "a cup of coffee",
                                 "--edit", "a cup of green tea", "--edit", "a red cup of coffee", "--preset", "smoke",
                                 "--model", str(tiny_model_dir), "--out", str(out)],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["edit_01.png", "edit_02.png", "reconstruction.png", "scores.json", "sheet.png"]
    report = json.loads((out / "scores.json").read_text())
    assert report["preset"]["name"] == "smoke" and report["scores"]["psnr_vs_vae"] > 5
    assert report["scores"]["lpips_vs_input"] is None and "lpips" in report["lpips_note"]
    assert report["edits"]["edit_01"]["prompt"] == "a cup of green tea"
    sheet = Image.open(out / "sheet.png")
    assert sheet.width == 4 * sheet.height - 4 * 18  # four labelled tiles: input | reconstruction | 2 edits
    assert "step" in proc.stderr  # progress bar


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("html", "cannot identify image (HTML)"),
        ("truncated", "truncated"),
        ("unknown-preset", "unknown preset 'ultra'"),
        ("unknown-model", "unknown model 'nope'"),
    ],
)
def test_edit_bad_input_exits_2_with_one_clear_line(tmp_path, tiny_model_dir, case, expected):
    files = {"html": ("page.html", image_files()["page.html"]), "truncated": ("t.jpg", image_files()["truncated.jpg"])}
    image = tmp_path / "good.png"
    image.write_bytes(image_files()["good.png"])
    if case in files:
        image = tmp_path / files[case][0]
        image.write_bytes(files[case][1])
    if case == "missing":
        image = tmp_path / "nope.jpg"
    args = ["edit", str(image), "--source-prompt", "a mug", "--edit", "a blue mug",
            "--preset", "ultra" if case == "unknown-preset" else "smoke",
            "--model", "nope" if case == "unknown-model" else str(tiny_model_dir), "--out", str(tmp_path / "o")]
    proc = subprocess.run(CLI + args, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_bad_input_corpus_through_run(tmp_path, tiny_model_dir, prefect_env, ray_env, monkeypatch):
    """``tight-pipeline run`` over the corpus, in this process (the subprocess CLI runs in the tests above and in
    test_prefect_that_does_not_start...: here the run's rows are what is checked, without a second interpreter's
    start-up), reporting to the session's Prefect server and Ray as a deployment would."""
    from typer.testing import CliRunner

    from flows.cli import app

    manifest, expect = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    for key, value in {**prefect_env, **ray_env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    proc = CliRunner().invoke(app, ["run", "--manifest", str(manifest), "--output", str(out), "--preset", "smoke",
                                    "--model", str(tiny_model_dir), "--max-failure-rate", "0.2"])
    # More than 20% of the corpus fails by design: exit non-zero, yet every row is written.
    assert proc.exit_code == 2, proc.output[-3000:] + repr(proc.exception)
    assert "exceeds --max-failure-rate" in proc.stderr
    rows = scores.read_latest(str(out))
    assert rows["row"].is_unique  # every corpus item has one edit: one row per manifest row
    assert sorted(rows["row"]) == list(range(1, len(expect) + 1))
    for key, (status, needle) in expect.items():
        if key.startswith("row-"):
            row = rows[rows["row"] == int(key[4:])].iloc[0]
        else:
            row = rows[(rows["item_id"] == key) & ~rows["edit_id"].str.startswith("*")].iloc[0]
        assert row["status"] == status, (key, row["status"], row["error"])
        if status != "ok":
            assert needle in row["error"], (key, row["error"])
            who = row["item_id"] if not key.startswith("row-") else f"manifest row {key[4:]}"
            assert who in row["error"], (key, row["error"])
        elif needle == "tokens":
            assert "tokens" in row["warnings"]
        elif needle == "negative":  # an empty edit against the empty negative prompt: accepted, and said
            assert "same as its negative prompt" in row["warnings"]
        elif needle == "upright":
            fitted = Image.open(row["input_uri"])
            assert fitted.height > fitted.width and "EXIF" in row["warnings"]
        elif needle == "auto":  # `preset: auto`: the scale chosen for the edit, and every scale tried
            tried = json.loads(row["auto_candidates"])
            assert row["preset"] == "smoke@auto" and row["auto_judge"] == "diffusion"
            assert [c["scale"] for c in tried] == [1.0, 0.4, 0.0][: len(tried)]  # strongest first
            auto = load_preset("smoke@auto")
            good = [c["scale"] for c in tried if c["landed"] >= auto.auto_min_landed and c["kept_db"] >= auto.auto_min_kept_db]
            landed = [c["scale"] for c in tried if c["landed"] >= auto.auto_min_landed]
            # the search stops at the first scale that passes both checks, and the rule picks as documented
            expected = {"landed": good[:1], "landed-not-faithful": landed[:1], "none-landed": [0.0]}[row["auto_reason"]]
            assert [row["adapter_scale"]] == expected and (good == tried[-1:] or len(tried) == 3)
        else:
            assert row["adapter_scale"] == 0.4 and pd.isna(row["auto_reason"])  # the run's fixed preset, smoke
    # Nothing was written outside the output prefix (Ray's and the CLI's own state aside).
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    outside = [p for p in written if not p.is_relative_to(out)]
    assert outside == []


@pytest.mark.slow
def test_prefect_that_does_not_start_ends_in_one_line_from_a_fresh_home(tmp_path, tiny_model_dir):
    """A fresh HOME and state folder; Prefect's temporary server given 1 s (a first start needs ~20 s here)."""
    env = _env(tmp_path)
    for key in ("PREFECT_HOME", "TIGHT_PIPELINE_HOME", "PREFECT_API_URL"):
        env.pop(key, None)
    env.update(HOME=str(tmp_path / "home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    (tmp_path / "home").mkdir()
    (tmp_path / "m.jsonl").write_text(json.dumps({"item_id": "a", "image_uri": "a.png", "source_prompt": "a mug",
                                                  "edits": [{"edit_id": "b", "prompt": "a blue mug"}]}) + "\n")
    proc = subprocess.run(CLI + ["run", "--manifest", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "out"),
                                 "--model", str(tiny_model_dir), "--preset", "smoke"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Prefect's temporary server did not start within 1 s" in lines[0], proc.stderr[-2000:]
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in lines[0] and "Traceback" not in proc.stderr
    assert (tmp_path / ".tight-pipeline" / "prefect").is_dir()  # the fresh state folder was created in the cwd


def test_local_defaults_wait_long_enough_for_a_first_prefect_start(monkeypatch, tmp_path):
    from tight_pipeline import settings

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("TIGHT_PIPELINE_HOME", str(tmp_path))
    settings.apply_local_defaults()
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120  # a first start took ~20 s
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")
    settings.apply_local_defaults()
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "7"  # the user's value wins


def test_every_command_says_bad_input_in_one_line():
    """One error rule for every command (flows/console.py::command_of): bad option values end in one ``error:``
    line and exit status 2, never a traceback (``tradeoff --scales`` once printed one)."""
    from typer.testing import CliRunner

    from flows.cli import app

    for args, message in [
        (["tradeoff", "--manifest", "m.jsonl", "--output", "out", "--scales", "0,a"],
         "error: --scales '0,a' must be comma-separated numbers, e.g. 0,0.4,1.0"),
        (["run", "--manifest", "m.jsonl", "--output", "out", "--output-size", "big"],
         "error: --output-size 'big' must be input or working"),
        (["edit", "nope.png", "--source-prompt", "a", "--edit", "b", "--out", "out"], "error: image nope.png does not exist"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and result.output.strip().splitlines()[-1] == message, result.output
