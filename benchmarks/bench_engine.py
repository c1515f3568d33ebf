"""Engine cost of the tight condition and of sharing one inversion across edits. Prints measured figures.

    python benchmarks/bench_engine.py [--model tiny-sdxl] [--steps 50] [--repeats 3]

(a) time(tight inversion + reconstruction) / time(plain, no adapter)          target <= 1.10
(b) time(1 inversion + reconstruction + 4 edits) / time(4 x (inversion + reconstruction + 1 edit))
                                                                              target <= 0.70
Both measured in one run, same model, steps and photo (scikit-image's coffee cup); medians of --repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model reference (default: tiny-sdxl, written if missing)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from skimage import data

    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.presets import load_preset

    spec = resolve_model_spec(args.model)
    if args.model is None and not os.path.exists(spec.base):
        from tight_pipeline.testing.tiny_models import make_tiny_model

        make_tiny_model(spec.base)
    photo = Image.fromarray(data.coffee())
    preset = dataclasses.replace(load_preset("balanced"), steps=args.steps)
    tight = load_engine(spec)
    plain = load_engine(dataclasses.replace(spec, adapter=None))
    edits = [(f"e{i}", p) for i, p in enumerate(["a red cup of coffee", "a cup of green tea", "a blue cup of coffee", "a glass cup of coffee"])]
    print(f"model {spec.name} ({spec.resolution}px, {tight.device}, {spec.dtype}), {args.steps} steps, torch threads {torch.get_num_threads()}")

    t_tight = median_time(lambda: tight.edit_item(photo, "a cup of coffee", [], preset), args.repeats)
    t_plain = median_time(lambda: plain.edit_item(photo, "a cup of coffee", [], preset), args.repeats)
    print(f"(a) inversion + reconstruction: tight {t_tight:.3f} s, plain {t_plain:.3f} s, ratio {t_tight / t_plain:.3f} (target <= 1.10)")

    t_shared = median_time(lambda: tight.edit_item(photo, "a cup of coffee", edits, preset), args.repeats)
    t_separate = median_time(lambda: [tight.edit_item(photo, "a cup of coffee", [e], preset) for e in edits], args.repeats)
    print(f"(b) 4 edits: one inversion {t_shared:.3f} s, four separate runs {t_separate:.3f} s, "
          f"ratio {t_shared / t_separate:.3f} (target <= 0.70; step count alone gives 0.625)")


if __name__ == "__main__":
    main()
