"""Half precision and inversion: reconstruction PSNR vs the VAE round-trip by dtype, and why the random tiny model
cannot pass in bf16 (its denoising amplifies any perturbation of the noise prediction).

    .venv/bin/python benchmarks/half_precision.py            # ~6 min on 2 CPU cores; prints one JSON

ReNoise, 20 steps x 8 iterations (the GPU test's setting), reconstruction only:
- ``trained``: the shipped demo model on 4 held-out shots, float32 / bfloat16 / float16 networks;
- ``tiny``: the random tiny SDXL on the coffee photo, the same dtypes, plus float32 with Gaussian noise of a given
  size added to every noise prediction while denoising (a stand-in for half-precision rounding).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))

from tight_pipeline.demo_model.products import ProductSpec, render_product  # noqa: E402
from tight_pipeline.method import conditioning, editing, inversion, metrics  # noqa: E402
from tight_pipeline.method.specs import resolve_model_spec  # noqa: E402
from tight_pipeline.method.factory import load_engine
from tight_pipeline.testing.tiny_models import make_tiny_model  # noqa: E402
from tight_pipeline.method.presets import Preset  # noqa: E402

PRESET = Preset(name="renoise-20x8", method="renoise", steps=20, inversion_scale=0.6, edit_scale=0.6, guidance=5.0,
                renoise_iterations=8)


def trained(dtype: str) -> list[float]:
    engine = load_engine(resolve_model_spec("catalog-demo", device="cpu", dtype=dtype))
    shots = [render_product(ProductSpec.sample(i, 99)) for i in range(4)]
    return [round(engine.edit_item(s.image, s.spec.caption, [], PRESET).scores["psnr_vs_vae"], 1) for s in shots]


def tiny(folder, dtype: str, noise: float = 0.0) -> float:
    from PIL import Image
    from skimage import data

    engine = load_engine(resolve_model_spec(str(folder), device="cpu", dtype=dtype))
    pipe = engine.pipe
    fitted = engine.prepare_image(Image.fromarray(data.coffee()))
    z0 = engine.encode(fitted)
    text = conditioning.embed_text(pipe, ["a cup of coffee"], fitted.height, fitted.width)
    rows = conditioning.embed_image(pipe, fitted).rows([False])
    conditioning.set_adapter_scale(pipe, PRESET.inversion_scale)
    schedule = inversion.make_schedule(pipe.scheduler, PRESET.steps)
    z_T = inversion.invert_renoise(pipe, z0, schedule, text, rows, iterations=PRESET.renoise_iterations)
    gen = torch.Generator().manual_seed(0)

    class Noisy:  # the UNet plus Gaussian noise on its prediction
        def __init__(self, unet):
            self.unet, self.dtype, self.device = unet, unet.dtype, unet.device

        def __call__(self, *args, **kwargs):
            out = self.unet(*args, **kwargs)
            return (out[0] + noise * torch.randn(out[0].shape, generator=gen).to(out[0].dtype),)

    class View:
        unet = Noisy(pipe.unet) if noise else pipe.unet

    z = editing.denoise(View, z_T, schedule, text, rows, 1, 0, 1.0)
    return round(metrics.psnr(engine.decode_tensor(z)[0], engine.decode_tensor(z0)[0]), 1)


def main() -> None:
    report = {"preset": "renoise 20 steps x 8 iterations, reconstruction PSNR vs VAE round-trip (dB)", "trained": {}, "tiny": {}}
    for dtype in ("float32", "bfloat16", "float16"):
        report["trained"][dtype] = trained(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_model(os.path.join(tmp, "tiny"))
        for dtype in ("float32", "bfloat16", "float16"):
            report["tiny"][dtype] = tiny(folder, dtype)
        for noise in (5e-4, 2e-3):
            report["tiny"][f"float32 + noise {noise:g} on eps"] = tiny(folder, "float32", noise)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
