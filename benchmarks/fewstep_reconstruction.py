"""Few-step reconstruction on the catalog demo model: how many steps each inversion needs for >= 40 dB vs the VAE.

    python benchmarks/fewstep_reconstruction.py [--shots 16] [--steps 2,4,8,10,20] [--out docs/fewstep.json]

Held-out demo shots at the model's 64 px, reconstruction only (no edit), image condition at 1.0 (the catalog
presets' scale), through the engine in one batch per setting: DDIM; ReNoise with the DDIM step (4 iterations,
the last 2 averaged); ReNoise with the Euler-ancestral step and its noise correction (``turbo-balanced``'s
settings; and ``turbo-faithful``'s: 9 iterations, regularisation). PSNR of the reconstruction against the VAE
round-trip (what any inversion can reach) and against the input; seconds per item on this machine.

The demo model was trained for 1,000-step DDPM and is not distilled: few steps here measure the *inversion's*
exactness at a step count, not the image quality a distilled model (SDXL-Turbo) gives at that count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET, ProductSpec, render_product
from tight_pipeline.method.factory import load_engine
from tight_pipeline.method.items import ItemRequest
from tight_pipeline.method.presets import load_preset
from tight_pipeline.method.specs import resolve_model_spec

SETTINGS = {
    "ddim": lambda p: dataclasses.replace(p, method="ddim", sampler="ddim", renoise_iterations=0),
    "renoise (ddim step)": lambda p: dataclasses.replace(p, sampler="ddim"),
    "renoise ancestral (turbo-balanced)": lambda p: p,
    "renoise ancestral (turbo-faithful)": lambda p: dataclasses.replace(
        load_preset("turbo-faithful"), steps=p.steps, inversion_scale=1.0, edit_scale=1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--steps", default="2,4,8,10,20")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    engine = load_engine(resolve_model_spec("catalog-demo", device="cpu"))
    shots = [render_product(ProductSpec.sample(7 + HELDOUT_SEED_OFFSET, i)) for i in range(args.shots)]
    requests = [ItemRequest(s.image, s.caption, []) for s in shots]
    base = dataclasses.replace(load_preset("turbo-balanced"), inversion_scale=1.0, edit_scale=1.0)
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for name, make in SETTINGS.items():
            preset = make(dataclasses.replace(base, steps=steps))
            t0 = time.perf_counter()
            results = engine.edit_items(requests, preset)
            seconds = (time.perf_counter() - t0) / len(requests)
            vae = [r.scores["psnr_vs_vae"] for r in results]
            rows.append({"steps": steps, "inversion": name, "psnr_vs_vae": round(float(np.mean(vae)), 2),
                         "worst_vs_vae": round(float(np.min(vae)), 2),
                         "psnr_vs_input": round(float(np.mean([r.scores["psnr_vs_input"] for r in results])), 2),
                         "s_per_item": round(seconds, 3)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| steps | inversion | PSNR vs VAE (mean / worst) | PSNR vs input | s / item |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['inversion']} | {r['psnr_vs_vae']} / {r['worst_vs_vae']} dB | "
              f"{r['psnr_vs_input']} dB | {r['s_per_item']} |")
    for name in SETTINGS:
        enough = [r["steps"] for r in rows if r["inversion"] == name and r["psnr_vs_vae"] >= 40]
        print(f"{name}: >= 40 dB vs the VAE from {min(enough)} steps" if enough else f"{name}: below 40 dB at every step count")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
