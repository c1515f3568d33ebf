"""Smoke tests of the benchmark scripts: they run end to end on the tiny model and print their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_gpu_runs_on_the_tiny_model_on_cpu(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--size", "tiny", "--device", "cpu", "--quick",
         "--steps", "2", "--batch", "2", "--work", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=300, env={"TORCH_THREADS": "2", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)  # progress lines go to stderr, the report alone to stdout
    assert report["device"] == "cpu" and report["size"] == "tiny"
    got = {(r["preset"], r["edits"], r["batch"]) for r in report["items"]}
    assert got == {("off", 1, 1), ("off", 1, 2), ("balanced", 1, 1), ("balanced", 1, 2)}
    assert all(r["s_per_item"] > 0 and r["items_per_min"] > 0 for r in report["items"])
    assert [f["batch"] for f in report["unet_floor"]] == [1, 4, 8]
    assert "balanced_over_off_batch2" in report["ratios"]
