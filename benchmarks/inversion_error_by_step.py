"""Where DDIM inversion loses the image, step by step, with and without the image condition. Prints figures.

    python benchmarks/inversion_error_by_step.py [--model catalog-demo] [--images 64] [--steps 10]

On held-out demo shots: invert with DDIM, reconstruct at guidance 1, and measure the latent error against the
encoded input; then redo it with one inversion step made exact (fixed-point iterations, as ReNoise does) at a
time. The share of the error each exact step removes says which noise levels the inversion error comes from;
scale 0 vs 1 says how much of it the image condition removes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab package, beside the product

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="catalog-demo")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=6, help="fixed-point iterations of the exact step")
    args = parser.parse_args()

    import torch

    from lab.demo_model.evaluate import EvalConfig, heldout_shots
    from tight_pipeline.method import conditioning, editing, inversion
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine

    torch.set_grad_enabled(False)
    engine = load_engine(resolve_model_spec(args.model, device="cpu"))
    pipe = engine.pipe
    shots = heldout_shots(EvalConfig(images=args.images))
    z0 = torch.cat([engine.encode(s.image) for s in shots])
    size = shots[0].image.height
    text = conditioning.embed_text(pipe, [s.caption for s in shots], size, size)
    image = torch.cat([conditioning.embed_image(pipe, s.image).positive for s in shots])
    schedule = inversion.make_schedule(pipe.scheduler, args.steps)
    kind = schedule.prediction_type

    def invert_one_exact(exact: int) -> torch.Tensor:
        """DDIM inversion with only step ``exact`` solved by fixed-point iterations (ReNoise's update)."""
        z = z0
        for i, t in enumerate(reversed(schedule.timesteps)):
            a_from, a_to = schedule.alpha(t - schedule.step_ratio), schedule.alpha(t)
            guess = inversion.ddim_move(z, conditioning.predict_noise(pipe, z, t, text, image), a_from, a_to, kind)
            for _ in range(args.iterations if i == exact else 0):
                out = conditioning.predict_noise(pipe, guess, t, text, image)
                _, eps = inversion.split_prediction(out, guess, a_to, kind)
                guess = inversion.ddim_move(z, eps, a_from, a_to, "epsilon")
            z = guess
        return z

    def error(z_T: torch.Tensor) -> float:
        """Latent MSE of the engine's reconstruction (guidance 1) from ``z_T``."""
        z = editing.denoise(pipe, z_T, schedule, text, image, len(shots), 0, 1.0)
        return float((z - z0).pow(2).mean())

    steps = list(reversed(schedule.timesteps))
    print(f"model {args.model}, {len(shots)} held-out shots, DDIM {args.steps}: latent MSE of the reconstruction")
    for scale in (0.0, 1.0):
        conditioning.set_adapter_scale(pipe, scale)
        plain = error(inversion.invert_ddim(pipe, z0, schedule, text, image))
        every = error(inversion.invert_renoise(pipe, z0, schedule, text, image, iterations=args.iterations))
        print(f"scale {scale:.1f}: plain {plain:.3e}, every step exact {every:.3e}")
        for i, t in enumerate(steps):
            e = error(invert_one_exact(i))
            print(f"  only step t={int(t):4d} exact: {e:.3e}  (removes {(plain - e) / plain * 100:5.1f} % of the error)")


if __name__ == "__main__":
    main()
