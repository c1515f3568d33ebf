"""Throughput of the full flow (Prefect + Ray + Parquet + MLflow) against a bare Python loop over the engine.

    python benchmarks/bench_pipeline.py [--items 64] [--preset draft] [--actors 1]

Same items (scikit-image photos, 2 locales each), model and preset in one run. The bare loop reads, decodes,
edits and writes PNGs in one process, once before and once after the flow (their mean is the reference); the flow does the same through `catalog_localization` on an embedded
Ray with Prefect's temporary server and MLflow on SQLite, start-up included.
Prints items/s of both and their ratio (target >= 0.8 at 64 items). The state folder is the usual one
(``$TIGHT_PIPELINE_HOME`` or ``./.tight-pipeline``); on the very first run it also creates the Prefect and
MLflow databases, which the output says.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def write_manifest(folder: Path, n: int) -> Path:
    from PIL import Image
    from skimage import data

    photos = {"coffee": data.coffee(), "rocket": data.rocket(), "chelsea": data.chelsea(), "astronaut": data.astronaut()}
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name, pixels in photos.items():
        img = Image.fromarray(pixels)
        img.thumbnail((256, 256))
        img.save(folder / "img" / f"{name}.png")
    names = list(photos)
    lines = [json.dumps({"item_id": f"item-{i:04d}", "image_uri": f"img/{names[i % len(names)]}.png",
                         "source_prompt": f"a photo of a {names[i % len(names)]}",
                         "locales": {"de-DE": "ein Foto, Winter", "ja-JP": "写真, 夏"}}) for i in range(n)]
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_loop(manifest: Path, out: Path, preset_name: str, model) -> float:
    from tight_pipeline.data import storage
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.data.manifest import read_manifest
    from tight_pipeline.method.presets import load_preset

    t0 = time.perf_counter()
    engine = load_engine(model)
    preset = load_preset(preset_name)
    for item in read_manifest(str(manifest)).items:
        image, _ = storage.decode_image(storage.read_bytes(item.image_uri))
        result = engine.edit_item(image, item.source_prompt, [(e.edit_id, e.prompt) for e in item.edits], preset)
        folder = out / item.item_id
        storage.write_bytes_atomic(str(folder / "input.png"), storage.encode_png(result.input))
        storage.write_bytes_atomic(str(folder / "reconstruction.png"), storage.encode_png(result.reconstruction))
        for edit_id, img in result.edits.items():
            storage.write_bytes_atomic(str(folder / f"{edit_id}.png"), storage.encode_png(img))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--preset", default="draft")
    parser.add_argument("--model", default=None)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tp-bench-"))
    # The state folder (Prefect and MLflow databases, tiny model) is the user's usual one, as with
    # `tight-pipeline run`: its databases are created once, on the first run ever, and reused after.
    from tight_pipeline.settings import apply_local_defaults, state_dir

    apply_local_defaults()  # the same environment `tight-pipeline run` sets up
    fresh = not (state_dir() / "prefect").exists() or not (state_dir() / "mlflow.db").exists()
    from tight_pipeline.method.specs import resolve_model_spec

    spec = resolve_model_spec(args.model)
    if args.model is None and not os.path.exists(spec.base):
        from tight_pipeline.testing.tiny_models import make_tiny_model

        make_tiny_model(spec.base)
    manifest = write_manifest(work / "in", args.items)

    # This machine's speed drifts by +-15 % over minutes (shared host): the bare loop runs before and after
    # the flow and the mean of both is the reference.
    loop_before = bare_loop(manifest, work / "loop-out-1", args.preset, spec)
    from flows.catalog_localization import catalog_localization

    t0 = time.perf_counter()
    summary = catalog_localization(manifest=str(manifest), output=str(work / "flow-out"), preset=args.preset,
                                   model=args.model or spec.base, actors=args.actors)
    flow_s = time.perf_counter() - t0
    loop_after = bare_loop(manifest, work / "loop-out-2", args.preset, spec)
    loop_s = (loop_before + loop_after) / 2
    assert summary["status_ok"] == 2 * args.items, summary
    loop_rate, flow_rate = args.items / loop_s, args.items / flow_s
    print(f"{args.items} items, preset {args.preset}, model {spec.name}, {os.cpu_count()} CPUs, {args.actors} actor(s); "
          f"state {state_dir()} ({'created by this run' if fresh else 'existing databases'})")
    print(f"bare engine loop : {loop_s:7.1f} s  {loop_rate:.3f} items/s  (before the flow {loop_before:.1f} s, after {loop_after:.1f} s)")
    print(f"full flow        : {flow_s:7.1f} s  {flow_rate:.3f} items/s  (Prefect + Ray + Parquet + MLflow, start-up included)")
    print(f"ratio flow/loop  : {flow_rate / loop_rate:.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
