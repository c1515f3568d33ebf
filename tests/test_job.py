"""The Ray Data job on an embedded, loopback-only Ray: exactly-once rows, resume, redo, actor crashes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import shutil

import psutil
import pytest

from tests.corpus import image_files
from tight_pipeline.method import fingerprints
from tight_pipeline.method.specs import resolve_model_spec
from tight_pipeline.method.fingerprints import model_digest, weights_digest
from tight_pipeline.data import scores
from tight_pipeline.pipeline.config import JobConfig
from tight_pipeline.pipeline.planner import plan_job
from tight_pipeline.pipeline.job import run_job

PRESET = "smoke@0.4"


def _manifest(folder: Path, n_good: int = 4) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    files = image_files()
    names = ["good.png", "cmyk.jpg", "gray.png", "palette.png", "rgba.png", "good.jpg"][:n_good]
    lines = []
    for i, name in enumerate(names):
        (folder / "img" / name).write_bytes(files[name])
        lines.append({"item_id": f"item-{i}", "image_uri": f"img/{name}", "source_prompt": "a product photo",
                      "locales": {"de-DE": "ein Produktfoto", "fr-FR": "une photo de produit"},
                      **({"preset": "smoke@0.70"} if i == 1 else {})})
    lines.append({"item_id": "broken", "image_uri": "img/missing.png", "source_prompt": "x",
                  "edits": [{"edit_id": "a", "prompt": "y"}]})
    lines.append({"item_id": "item-0", "image_uri": "img/good.png", "source_prompt": "dup", "edits": [{"edit_id": "a", "prompt": "b"}]})
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def _assert_exactly_once(rows, n_good):
    keys = list(zip(rows["preset_hash"], rows["item_id"], rows["edit_id"]))
    assert len(keys) == len(set(keys))
    assert len(rows) == 2 * n_good + 1 + 1  # 2 locales per good item, 1 error row (1 edit), 1 invalid row
    assert sorted(rows["row"].tolist()) == sorted([r for r in range(1, n_good + 1) for _ in range(2)] + [n_good + 1, n_good + 2])


def test_rows_exactly_once_then_resume_then_redo_deleted(tmp_path, tiny_model_dir, ray_session):
    manifest = _manifest(tmp_path / "in")
    out = tmp_path / "out"
    model_dir = tmp_path / "model"  # a copy: its weights are changed in place at the end
    shutil.copytree(tiny_model_dir, model_dir)
    config = JobConfig(manifest=str(manifest), output=str(out), preset=PRESET, model=str(model_dir), batch_size=2)

    first = run_job(config)
    rows = first.rows
    _assert_exactly_once(rows, 4)
    assert first.processed_items == 5 and first.skipped_items == 0  # 4 good + the missing image
    assert first.counts == {"ok": 8, "error": 1, "invalid": 1}
    err = rows[rows["status"] == "error"].iloc[0]
    assert "item 'broken'" in err["error"] and "does not exist" in err["error"]
    inv = rows[rows["status"] == "invalid"].iloc[0]
    assert inv["row"] == 6 and "duplicate item_id" in inv["error"] and inv["edit_id"] == "*row6"
    ok = rows[rows["status"] == "ok"]
    per_item = rows[rows["item_id"] == "item-1"]  # its own preset, resolved and hashed like any other
    assert set(per_item["preset"]) == {"smoke@0.7"} and set(per_item["preset_hash"]).isdisjoint(set(rows.loc[rows["item_id"] == "item-0", "preset_hash"]))
    assert ok["psnr_vs_vae"].notna().all() and (ok["time_total_s"] > 0).all()
    for uri in ok["edit_uri"].tolist() + ok["reconstruction_uri"].tolist():
        assert Path(uri).is_file() and Path(uri).resolve().is_relative_to(out.resolve())
    assert not (out / "scores" / "_plan").exists() or not any((out / "scores" / "_plan").iterdir())  # plan removed
    assert len(list((out / "scores" / first.config.run_id).glob("part-*.parquet"))) >= 2  # written by the workers

    victim = ok.iloc[0]
    os.remove(victim["edit_uri"])
    third = run_job(config)
    # resume: the three items whose PNGs are all there are skipped; the item whose PNG vanished is redone, and
    # the failed item is retried
    assert third.processed_items == 2 and third.skipped_items == 3
    _assert_exactly_once(third.rows, 4)
    assert Path(victim["edit_uri"]).is_file()
    redone = third.rows[(third.rows["run_id"] == third.config.run_id) & (third.rows["status"] != "invalid")]
    assert set(redone["item_id"]) == {victim["item_id"], "broken"}
    stored = scores.read_latest(str(out))
    assert len(stored) == len(third.rows)  # one current row per key in the dataset too
    assert set(stored["model_digest"]) == {third.model_digest}

    # Same folder, same model.yaml, retrained weights: nothing made by the old weights counts as done.
    from safetensors.torch import load_file, save_file

    unet_file = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    before = plan_job(config)  # the old weights: the failing item to do, the other four resume candidates
    assert (before.items, before.todo_items, before.candidate_items) == (5, 1, 4)
    state = load_file(unet_file)
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3
    save_file(state, unet_file)
    # The plan decides what runs (the runs above show the workers follow it): with the new weights' digest no
    # earlier row is done, so every valid item is to do again and none is a resume candidate.
    fourth = plan_job(config)
    assert model_digest(resolve_model_spec(str(model_dir))) != third.model_digest
    assert (fourth.items, fourth.todo_items, fourth.candidate_items) == (5, 5, 0)


def test_model_digest_follows_the_weights_not_only_the_spec(tmp_path, tiny_model_dir, monkeypatch):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    spec = resolve_model_spec(str(model_dir))
    before, spec_before = model_digest(spec), spec.digest
    assert model_digest(resolve_model_spec(str(model_dir))) == before  # stable

    # One byte of the adapter weight, same size: the spec is unchanged, the model digest is not.
    weight = model_dir / "ip_adapter" / "sdxl_models" / spec.adapter_weight
    data = bytearray(weight.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weight.write_bytes(bytes(data))
    assert spec.digest == spec_before and model_digest(spec) != before

    # Large files are sampled (head, tail, evenly spaced windows): a rewrite is still seen.
    monkeypatch.setattr(fingerprints, "_FULL_HASH_BYTES", 1024)
    monkeypatch.setattr(fingerprints, "_SAMPLE_BYTES", 256)
    monkeypatch.setattr(fingerprints, "_fingerprints", {})  # the per-process cache holds whole-file hashes
    sampled = weights_digest(spec)
    encoder = model_dir / "ip_adapter" / "models" / "image_encoder" / "model.safetensors"
    data = bytearray(encoder.read_bytes())
    data[-10] ^= 0xFF
    encoder.write_bytes(bytes(data))
    assert weights_digest(spec) != sampled

    # A repo id that is not in the local cache: no digest of nothing (a driver without the weights cache once
    # fingerprinted "<unresolved>"); the error names the part and where it was looked for.
    missing = resolve_model_spec(str(model_dir), base="nobody/not-cached-anywhere")
    with pytest.raises(fingerprints.WeightsNotFound, match=r"base \(nobody/not-cached-anywhere\)"):
        weights_digest(missing)


def test_gpus_are_requested_by_the_model_s_device_not_by_what_the_cluster_shows(tiny_model_dir):
    from tight_pipeline.pipeline.cluster import ComputeSettingError, actor_pool, check_compute, gpus_per_actor

    config = JobConfig(manifest="m.jsonl", output="out")
    cuda = resolve_model_spec(str(tiny_model_dir), device="cuda")
    cpu = resolve_model_spec(str(tiny_model_dir), device="cpu")
    auto = resolve_model_spec(str(tiny_model_dir))
    # A GPU group autoscaling from zero shows no GPU at 02:00: a cuda model still asks one per actor.
    assert gpus_per_actor(config, cuda, cluster_gpus=0) == 1.0
    assert gpus_per_actor(config, cpu, cluster_gpus=8) == 0.0
    assert (gpus_per_actor(config, auto, 0), gpus_per_actor(config, auto, 2)) == (0.0, 1.0)
    assert gpus_per_actor(dataclasses.replace(config, gpus_per_actor=0.5), cuda, 0) == 0.5
    fixed = actor_pool(dataclasses.replace(config, actors=4))
    assert (fixed.min_size, fixed.max_size) == (4, 4)
    scaling = actor_pool(dataclasses.replace(config, actors=8, min_actors=1))
    assert (scaling.min_size, scaling.max_size) == (1, 8)
    for bad, name in [(dict(actors=0), "actors"), (dict(actors=2, min_actors=3), "min_actors"),
                      (dict(actor_cpus=0), "actor_cpus"), (dict(gpus_per_actor=-1), "gpus_per_actor")]:
        with pytest.raises(ComputeSettingError, match=name):
            check_compute(dataclasses.replace(config, **bad))


@pytest.mark.drill
def test_killed_actor_is_restarted_and_no_row_is_lost(tmp_path, tiny_model_dir, ray_session):
    manifest = _manifest(tmp_path / "in", n_good=6)
    out = tmp_path / "out"
    config = JobConfig(manifest=str(manifest), output=str(out), preset="balanced@0.4", model=str(tiny_model_dir))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", run_job(config)))
    thread.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None and thread.is_alive():
        if list(out.glob("*/*/reconstruction.png")):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "EditorActor" in cmd and proc.pid != os.getpid():
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = proc.pid
                    break
        time.sleep(0.2)
    thread.join(timeout=400)
    assert killed is not None, "no actor process was found to kill"
    rows = result["r"].rows
    _assert_exactly_once(rows, 6)
    assert (rows["status"] == "ok").sum() == 12
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    workers = set(rows.loc[rows["status"] == "ok", "worker"])
    assert any(not w.endswith(f":{killed}") for w in workers)  # a restarted actor finished the run


def test_item_time_limit_turns_slow_items_into_error_rows(tmp_path, tiny_model_dir, ray_session):
    manifest = _manifest(tmp_path / "in", n_good=1)
    config = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), preset=PRESET, model=str(tiny_model_dir),
                       item_timeout_s=0.01)
    rows = run_job(config).rows
    slow = rows[(rows["item_id"] == "item-0") & (rows["status"] != "invalid")]  # (the manifest repeats item-0)
    assert len(slow) == 2 and (slow["status"] == "error").all()
    assert slow["error"].str.contains("item 'item-0': TimeoutError: item took longer than item_timeout_s=0.01 s").all()
    assert not list((tmp_path / "out" / "scores" / "_plan").glob("*/*"))


def test_a_gpu_the_cluster_never_gets_ends_the_run_in_one_error_naming_it(tmp_path, tiny_model_dir, ray_session):
    """Ray Data would wait for actors forever; the run waits actor_wait_s, then names what it waited for."""
    from tight_pipeline.pipeline.cluster import ClusterError

    manifest = _manifest(tmp_path / "in", 1)
    config = JobConfig(manifest=str(manifest), output=str(tmp_path / "out"), preset=PRESET,
                       model=str(tiny_model_dir), gpus_per_actor=1, actor_wait_s=3)
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=r"no actor started within actor_wait_s=3 s: waited for 1 actor\(s\) of "
                                           r"\{'CPU': 1.0, 'GPU': 1.0\} each; the cluster has \{'CPU': 2.0\}"):
        run_job(config)
    assert time.perf_counter() - t0 < 60


def test_weights_missing_on_the_driver_are_fingerprinted_on_a_worker_or_named(tiny_model_dir, ray_session):
    """A driver without the weights cache asks a worker (a Ray task placed like an actor); weights that no node has
    stop the run naming the part — never a digest of nothing."""
    from tight_pipeline.method.fingerprints import WeightsNotFound
    from tight_pipeline.pipeline.cluster import resolve_digest

    config = JobConfig(manifest="m.jsonl", output="out", actor_wait_s=60)
    spec = resolve_model_spec(str(tiny_model_dir))
    assert resolve_digest(config, spec) == model_digest(spec)  # here: computed locally, no task
    missing = resolve_model_spec(str(tiny_model_dir), base="nobody/not-cached-anywhere")
    with pytest.raises(WeightsNotFound, match=r"base \(nobody/not-cached-anywhere\).*; on the workers too: model "
                                              r"'tiny-sdxl': weights not found on") as caught:
        resolve_digest(config, missing)
    assert "\n" not in str(caught.value)  # one line, no traceback of the task


def test_png_cache_never_hands_one_image_the_bytes_of_another():
    """Outputs are encoded through one cache per item; keyed by ``id`` of temporaries it once wrote the photo's
    bytes as an edit (3 of 60 edits of a benchmark run were the input photo) when a freed id was reused."""
    import numpy as np
    from PIL import Image

    from tight_pipeline.pipeline.actor import PngCache

    cache = PngCache()
    pngs = [cache(Image.fromarray(np.full((8, 8, 3), k, np.uint8))) for k in range(50)]  # temporaries, ids reused
    assert len(set(pngs)) == 50
    same = Image.new("RGB", (8, 8))
    assert cache(same) is cache(same)  # one object: encoded once
