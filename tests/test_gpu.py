"""CUDA / bf16 path of the engine (skipped without a GPU; run on a GPU machine with `pytest -m gpu`)."""

from __future__ import annotations

import dataclasses

import pytest

from tight_pipeline.method.presets import load_preset

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_renoise_on_cuda_reconstructs_the_trained_model(dtype):
    """Half-precision networks, float32 latents and fixed points. The trained demo model, not the random tiny one:
    the tiny model turns any 5e-4 perturbation of its noise prediction into a 25 dB reconstruction even in float32
    (benchmarks/half_precision.py), so no half-precision network can reconstruct it to 30 dB."""
    import numpy as np

    from tight_pipeline.demo_model.products import ProductSpec, render_product
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine

    gpu = load_engine(resolve_model_spec("catalog-demo", device="cuda", dtype=dtype))
    cpu = load_engine(resolve_model_spec("catalog-demo", device="cpu"))
    assert gpu.device.type == "cuda"
    preset = dataclasses.replace(load_preset("faithful"), steps=20, renoise_iterations=8)
    shot = render_product(ProductSpec.sample(11, 99))
    on_gpu = gpu.edit_item(shot.image, shot.spec.caption, [("blue", "a blue mug")], preset)
    on_cpu = cpu.edit_item(shot.image, shot.spec.caption, [("blue", "a blue mug")], preset)
    assert np.isfinite(np.asarray(on_gpu.reconstruction, dtype=float)).all()
    assert on_gpu.scores["psnr_vs_vae"] > 30  # CPU bf16: 54-57 dB; H100 bf16 53.8, fp16 64.3
    edit_gpu, edit_cpu = (np.asarray(r.edits["blue"], dtype=float) for r in (on_gpu, on_cpu))
    gap = np.abs(edit_gpu - edit_cpu).mean()
    moved = np.abs(edit_cpu - np.asarray(shot.image, dtype=float)).mean()
    if dtype == "float16":
        assert gap < 1.0  # H100: 0.06 levels of 255
    else:
        # bf16's 8-bit mantissa on the GPU's kernels: the reconstruction stays (0.46 levels) but a CFG 7.5 edit
        # drifts (H100: 10.9 levels mean while the edit itself moves the photo 41.5); it must still be the same edit.
        assert gap < 0.5 * moved


def test_batched_items_on_cuda_equal_one_item_runs(tiny_spec, photo):
    import numpy as np

    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.factory import load_engine

    gpu = load_engine(dataclasses.replace(tiny_spec, device="cuda", max_batch=4))
    preset = dataclasses.replace(load_preset("balanced"), steps=10)
    requests = [ItemRequest(photo.rotate(a), "a cup of coffee", [("tea", "a cup of green tea")] * (k % 2 + 1))
                for k, a in enumerate((0, 90, 180, 270, 45))]
    batched = gpu.edit_items(requests, preset)
    for r, b in zip(requests, batched):
        a = gpu.edit_item(r.image, r.source_prompt, r.edits, preset)
        gap = np.abs(np.asarray(a.reconstruction, dtype=int) - np.asarray(b.reconstruction, dtype=int)).max()
        assert gap <= 2


def test_cuda_ddim_inversion_equals_inverse_scheduler(tiny_spec, photo):
    import torch
    from diffusers import DDIMInverseScheduler

    from tight_pipeline.method import conditioning, inversion
    from tight_pipeline.method.factory import load_engine

    # The spec's TF32 policy (off by default) also turns off cuDNN's TF32 convolutions, which PyTorch enables.
    eng = load_engine(dataclasses.replace(tiny_spec, device="cuda", dtype="float32"))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    fitted = eng.prepare_image(photo)
    z0 = eng.encode(fitted)
    text = conditioning.embed_text(eng.pipe, ["a cup"], fitted.height, fitted.width)
    rows = conditioning.embed_image(eng.pipe, fitted).rows([False])
    conditioning.set_adapter_scale(eng.pipe, 0.4)
    schedule = inversion.make_schedule(eng.pipe.scheduler, 10)
    ours = inversion.invert_ddim(eng.pipe, z0, schedule, text, rows)
    inverse = DDIMInverseScheduler.from_config(eng.pipe.scheduler.config)
    inverse.set_timesteps(10)
    z = z0
    for t in inverse.timesteps:
        z = inverse.step(conditioning.predict_noise(eng.pipe, z, t, text, rows), t, z).prev_sample
    assert torch.allclose(ours, z, atol=1e-4)


def test_tiny_flux_rf_inversion_on_cuda_bf16(tmp_path, photo):
    import numpy as np

    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.testing.tiny_models import make_tiny_flux_model

    folder = make_tiny_flux_model(tmp_path / "tiny-flux")
    gpu = load_engine(resolve_model_spec(str(folder), device="cuda", dtype="bfloat16"))
    assert gpu.device.type == "cuda" and gpu.pipe.image_encoder.dtype.is_floating_point
    preset = dataclasses.replace(load_preset("flux-faithful"), steps=10)
    result = gpu.edit_item(photo, "a cup of coffee", [("tea", "a cup of green tea")], preset)
    assert np.isfinite(np.asarray(result.edits["tea"], dtype=float)).all()
    assert result.scores["psnr_vs_vae"] > 25  # bf16 limits the fixed point, far above garbage


@pytest.mark.parametrize("name", ["turbo-balanced", "lcm-balanced"])
def test_few_step_presets_on_cuda_bf16_reconstruct_the_trained_model(name):
    """The noise-corrected few-step inversions in bf16 on the GPU (4 steps, Turbo's trailing spacing; LCM's own
    timesteps), the trained demo model at scale 1.0. CPU float32 / bf16 on four shots: 40.7-44.1 / 40.1-43.8 dB."""
    import numpy as np

    from tight_pipeline.demo_model.products import ProductSpec, render_product
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.specs import resolve_model_spec

    gpu = load_engine(resolve_model_spec("catalog-demo", device="cuda", dtype="bfloat16", timestep_spacing="trailing"))
    preset = dataclasses.replace(load_preset(name), inversion_scale=1.0, edit_scale=1.0)
    shot = render_product(ProductSpec.sample(11, 99))
    result = gpu.edit_item(shot.image, shot.spec.caption, [("blue", "a blue mug")], preset)
    assert np.isfinite(np.asarray(result.edits["blue"], dtype=float)).all()
    assert result.scores["psnr_vs_vae"] > 35, result.scores
