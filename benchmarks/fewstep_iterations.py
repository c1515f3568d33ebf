"""How many ReNoise iterations the few-step presets need on the demo model (and what bf16 changes).

    python benchmarks/fewstep_iterations.py [--dtype float32|bfloat16] [--shots 16]      # ~1.5 min on 2 CPU cores

Held-out demo shots, the reconstruction and one colour edit (CFG 1), image condition 1.0, 4 steps with Turbo's
trailing spacing (the LCM path takes LCM's own timesteps): ``turbo-balanced`` and ``lcm-balanced`` at 2, 3 and 4
iterations (last 2 averaged; ``turbo-draft`` is the first row). Prints PSNR vs the VAE round-trip (mean, worst),
the share of colour edits the demo colour classifier sees land, UNet rows per item + edit and seconds per item.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET, ProductSpec, dominant_colour, render_product
from tight_pipeline.method.factory import load_engine
from tight_pipeline.method.items import ItemRequest
from tight_pipeline.method.presets import load_preset
from tight_pipeline.method.specs import resolve_model_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shots", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(2)
    shots = [render_product(ProductSpec.sample(7 + HELDOUT_SEED_OFFSET, i)) for i in range(args.shots)]
    targets = [next(c for c in ("blue", "red", "green", "yellow") if c != s.spec.colour) for s in shots]
    requests = [ItemRequest(s.image, s.caption, [("colour", dataclasses.replace(s.spec, colour=c).caption)])
                for s, c in zip(shots, targets)]
    engine = load_engine(resolve_model_spec("catalog-demo", device="cpu", dtype=args.dtype, timestep_spacing="trailing"))
    for name in ("turbo-balanced", "lcm-balanced"):
        for iterations in (2, 3, 4):
            preset = dataclasses.replace(load_preset(name), inversion_scale=1.0, edit_scale=1.0,
                                         renoise_iterations=iterations, renoise_average_last=2)
            t0 = time.perf_counter()
            results = engine.edit_items(requests, preset)
            seconds = (time.perf_counter() - t0) / len(requests)
            vae = [r.scores["psnr_vs_vae"] for r in results]
            landed = np.mean([dominant_colour(r.edits["colour"], s.mask) == c for r, s, c in zip(results, shots, targets)])
            print(json.dumps({"preset": name, "dtype": args.dtype, "iterations": iterations,
                              "unet_rows_per_item": preset.steps * (iterations + 2) + 2 * preset.steps,
                              "psnr_vs_vae": round(float(np.mean(vae)), 2), "worst": round(float(np.min(vae)), 2),
                              "colour_landed": round(float(landed), 3), "s_per_item": round(seconds, 3)}), flush=True)


if __name__ == "__main__":
    main()
