"""Smoke tests of the benchmark scripts: they run end to end on the tiny model and print their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.drill  # the GPU script on CPU (15-21 s): `make drills`, keeping `make test` under 10 minutes
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


def _bench(tmp_path, *args):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--size", "tiny", "--device", "cpu", "--no-peers",
         "--steps", "2", *args],
        capture_output=True, text=True, timeout=400, env={"TORCH_THREADS": "2", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.drill  # the GPU script on CPU (15-21 s): `make drills`, keeping `make test` under 10 minutes
def test_bench_gpu_cases_at_two_resolutions_few_step_ratios_and_a_compile_switch(tmp_path):
    """What gpu_check.sh's sdxl and switches sections run, on the tiny model: a case at another working size shares the
    loaded pipeline, the few-step speed-up is reported against balanced, and the compiled network runs every step of
    a case on one captured graph (the timestep reaches the UNet as a tensor: with a Python int, dynamo captured one
    graph per timestep)."""
    report = _bench(tmp_path, "--batch", "2", "--work", str(tmp_path / "model"), "--floor-batches", "1",
                    "--cases", "balanced:1:2,turbo-balanced:1:2,turbo-balanced:1:2:32", "--switches", "eager",
                    "--switch-cases", "balanced:1:2")
    got = [(r["preset"], r["batch"], r["resolution"], r["steps"]) for r in report["items"]]
    assert got == [("balanced", 2, 64, 2), ("turbo-balanced", 2, 64, 4), ("turbo-balanced", 2, 32, 4)]
    assert report["ratios"]["turbo-balanced_speedup_over_balanced_batch2"] > 0
    assert all(r["warmup_s"] > 0 for r in report["items"])
    (switch,) = report["switches"]
    assert switch["switch"] == "compile:eager" and switch["s_per_item"] > 0, switch
    assert switch["graphs"] <= 2, switch  # one graph for the batch's shape (and one for a smaller last chunk at most)


@pytest.mark.slow
@pytest.mark.drill  # the lab's training / a benchmark's build: make drills (make test stays near 7 minutes)
def test_bench_gpu_builds_the_flux_architecture_in_memory_and_times_it(tmp_path):
    report = _bench(tmp_path, "--family", "flux", "--batch", "1", "--work", str(tmp_path / "flux"),
                    "--cases", "flux-balanced:1:1")
    assert report["family"] == "flux" and "unet_floor" not in report
    (row,) = report["items"]
    assert row["preset"] == "flux-balanced" and row["method"] == "rf_inversion" and row["s_per_item"] > 0
    assert (tmp_path / "flux" / "ip_adapter" / "ip_adapter.safetensors").exists()
    assert not (tmp_path / "flux" / "transformer").exists()  # the base lives in memory only


@pytest.mark.slow
@pytest.mark.drill  # a deployment drill (the script a lent GPU runs), ~45 s: `make drills`, not `make test`
def test_gpu_check_script_runs_every_bench_section_on_cpu(tmp_path):
    """The one script a scarce GPU lease runs, run on CPU with the tiny models (BENCH_EXTRA), so that a lease is never
    spent on a script error; and every preset its default cases name exists."""
    import os
    import re

    from tight_pipeline.method.presets import load_preset

    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    for default in re.findall(r'\$\{(?:CASES|SWITCH_CASES|FLUX_CASES):-([^}]*)\}', script):
        for part in default.split(","):
            load_preset(part.split(":")[0])  # raises for an unknown preset
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "OUT": str(tmp_path / "out"), "TORCH_THREADS": "2",
           "SECTIONS": "sdxl,switches,flux", "BENCH_EXTRA": "--size tiny --device cpu --steps 2",
           "WORK": str(tmp_path / "model"), "CASES": "balanced:1:2,turbo-balanced:1:2,turbo-balanced:1:2:32",
           "SWITCH_CASES": "balanced:1:2", "SWITCHES": "eager", "FLUX_CASES": "flux-balanced:1:1",
           "HOME": os.environ.get("HOME", "/tmp")}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "bench rc=0" in out.stdout and "switches rc=0" in out.stdout and "flux rc=0" in out.stdout, out.stdout[-3000:]
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [r["preset"] for r in bench["items"]] == ["balanced", "turbo-balanced", "turbo-balanced"]
    assert "turbo-balanced_speedup_over_balanced_batch2" in bench["ratios"] and "txt2img_cfg_batch8_s_per_image" in bench["peers"]
    switches = json.loads((tmp_path / "out" / "switches.json").read_text())
    assert switches["items"] == [] and switches["switches"][0]["switch"] == "compile:eager"
    flux = json.loads((tmp_path / "out" / "flux.json").read_text())
    assert flux["family"] == "flux" and flux["items"][0]["preset"] == "flux-balanced"
