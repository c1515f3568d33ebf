"""Few-step reconstruction on the catalog demo model: how many steps each inversion needs for >= 40 dB vs the VAE.

    python benchmarks/fewstep_reconstruction.py [--shots 16] [--steps 2,4,8,10,20] [--spacing leading,trailing]
                                                [--only SUBSTRING] [--out docs/fewstep.json]

Held-out demo shots at the model's 64 px, the reconstruction and one colour edit (CFG 1: the few-step presets'),
image condition at 1.0 (the catalog
presets' scale), through the engine in one batch per setting: DDIM; ReNoise with the DDIM step (4 iterations,
the last 2 averaged); ReNoise with the Euler-ancestral step and its noise correction (``turbo-balanced``'s
settings; and ``turbo-faithful``'s: 9 iterations, regularisation), with the model's own timestep spacing
(``leading``: the last step starts at t = 1) and with Turbo's (``trailing``: the last step starts at t = 1000 / steps
- 1, where the ancestral step adds no noise, so nothing corrects it). PSNR of the reconstruction against the VAE
round-trip (what any inversion can reach) and against the input; ReNoise with the LCM step and the same correction
(``lcm-balanced``: LCM's own timesteps whatever the spacing, e.g. 999, 759, 499, 259 for 4 steps), the share of colour edits the demo colour classifier
sees land, seconds per item (reconstruction + edit) on this machine.

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

from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET, ProductSpec, dominant_colour, render_product
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
    "renoise lcm (lcm-balanced)": lambda p: dataclasses.replace(p, sampler="lcm"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--steps", default="2,4,8,10,20")
    ap.add_argument("--spacing", default="leading,trailing")
    ap.add_argument("--only", default="", help="run only the inversions whose name contains this, e.g. 'lcm'")
    ap.add_argument("--out", default="", help="write the rows here as JSON (rows already in the file for other "
                    "settings are kept)")
    args = ap.parse_args()
    settings = {k: v for k, v in SETTINGS.items() if args.only in k}
    torch.set_num_threads(2)
    shots = [render_product(ProductSpec.sample(7 + HELDOUT_SEED_OFFSET, i)) for i in range(args.shots)]
    targets = [next(c for c in ("blue", "red", "green", "yellow") if c != s.spec.colour) for s in shots]
    requests = [ItemRequest(s.image, s.caption, [("colour", dataclasses.replace(s.spec, colour=c).caption)])
                for s, c in zip(shots, targets)]
    base = dataclasses.replace(load_preset("turbo-balanced"), inversion_scale=1.0, edit_scale=1.0)
    rows = []
    for spacing in args.spacing.split(","):
        engine = load_engine(resolve_model_spec("catalog-demo", device="cpu", timestep_spacing=spacing))
        for steps in [int(s) for s in args.steps.split(",")]:
            for name, make in settings.items():
                preset = make(dataclasses.replace(base, steps=steps))
                t0 = time.perf_counter()
                results = engine.edit_items(requests, preset)
                seconds = (time.perf_counter() - t0) / len(requests)
                vae = [r.scores["psnr_vs_vae"] for r in results]
                rows.append({"spacing": spacing, "steps": steps, "inversion": name,
                             "psnr_vs_vae": round(float(np.mean(vae)), 2), "worst_vs_vae": round(float(np.min(vae)), 2),
                             "psnr_vs_input": round(float(np.mean([r.scores["psnr_vs_input"] for r in results])), 2),
                             "colour_landed": round(float(np.mean([dominant_colour(r.edits["colour"], s.mask) == c
                                                                  for r, s, c in zip(results, shots, targets)])), 3),
                             "s_per_item": round(seconds, 3)})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| spacing | steps | inversion | PSNR vs VAE (mean / worst) | PSNR vs input | colour edits landed | s / item |"
          "\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['spacing']} | {r['steps']} | {r['inversion']} | {r['psnr_vs_vae']} / {r['worst_vs_vae']} dB | "
              f"{r['psnr_vs_input']} dB | {r['colour_landed']:.0%} | {r['s_per_item']} |")
    for spacing in args.spacing.split(","):
        for name in settings:
            enough = [r["steps"] for r in rows if r["spacing"] == spacing and r["inversion"] == name and r["psnr_vs_vae"] >= 40]
            print(f"{spacing}, {name}: >= 40 dB vs the VAE from {min(enough)} steps" if enough
                  else f"{spacing}, {name}: below 40 dB at every step count")
    if args.out:
        out = Path(args.out)
        done = {(r["spacing"], r["steps"], r["inversion"]) for r in rows}
        kept = [r for r in (json.loads(out.read_text()) if out.exists() else [])
                if (r["spacing"], r["steps"], r["inversion"]) not in done]
        out.write_text(json.dumps(kept + rows, indent=1))


if __name__ == "__main__":
    main()
