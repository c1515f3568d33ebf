"""The Tight Inversion engine on the tiny SDXL model (real diffusers components, random weights)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMInverseScheduler

from tight_pipeline.method import conditioning, editing, inversion
from tight_pipeline.method.specs import ModelError, resolve_model_spec
from tight_pipeline.method.models import load_pipeline
from tight_pipeline.method.items import InputError, fit_size
from tight_pipeline.method.sdxl import TightInversion
from tight_pipeline.method.presets import load_preset


def _setup(engine, photo, scale=0.4, steps=10):
    pipe = engine.pipe
    fitted = engine.prepare_image(photo)
    z0 = engine.encode(fitted)
    text = conditioning.embed_text(pipe, ["a cup of coffee"], fitted.height, fitted.width)
    img = conditioning.embed_image(pipe, fitted)
    conditioning.set_adapter_scale(pipe, scale)
    return pipe, fitted, z0, text, img.rows([False]), inversion.make_schedule(pipe.scheduler, steps)


def test_explicit_ddim_inversion_equals_ddim_inverse_scheduler(engine, photo):
    pipe, _, z0, text, rows, schedule = _setup(engine, photo)
    ours = inversion.invert_ddim(pipe, z0, schedule, text, rows)

    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(len(schedule.timesteps))
    z = z0
    for t in inverse.timesteps:
        out = conditioning.predict_noise(pipe, z, t, text, rows)
        z = inverse.step(out, t, z).prev_sample
    diff = (ours - z).abs().max().item()
    print(f"max |explicit - DDIMInverseScheduler| = {diff:.3e}")
    assert diff < 1e-5
    assert (ours - z0).abs().mean() > 0.1  # it actually moved towards noise


def test_explicit_reconstruction_equals_pipeline_call(engine, photo):
    """Our denoising loop from z_T gives what StableDiffusionXLPipeline.__call__ gives from the same latents."""
    pipe, fitted, z0, text, rows, schedule = _setup(engine, photo, steps=8)
    z_T = inversion.invert_ddim(pipe, z0, schedule, text, rows)
    ours = editing.denoise(pipe, z_T, schedule, text, rows, 1, 0, 1.0)
    theirs = pipe(
        prompt="a cup of coffee", latents=z_T.clone(), num_inference_steps=len(schedule.timesteps),
        guidance_scale=1.0, height=fitted.height, width=fitted.width, ip_adapter_image_embeds=[rows[None]],
        output_type="latent",
    ).images
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.slow
def test_renoise_reconstructs_near_exactly_and_ddim_is_reported(engine, photo):
    preset = load_preset("faithful")
    fast = dataclasses.replace(preset, steps=16, renoise_iterations=8)
    renoise = engine.edit_item(photo, "a cup of coffee", [], fast)
    ddim = engine.edit_item(photo, "a cup of coffee", [], dataclasses.replace(fast, method="ddim", renoise_iterations=0))
    print(f"tiny model, 16 steps: renoise {renoise.scores['psnr_vs_vae']:.1f} dB, ddim {ddim.scores['psnr_vs_vae']:.1f} dB vs VAE")
    assert renoise.scores["psnr_vs_vae"] >= 40.0
    assert renoise.scores["psnr_vs_vae"] > ddim.scores["psnr_vs_vae"] + 10


def test_adapter_scale_changes_prediction_and_scale_zero_equals_no_adapter(engine, tiny_spec, photo):
    pipe, _, z0, text, rows, schedule = _setup(engine, photo)
    t = schedule.timesteps[3]
    conditioning.set_adapter_scale(pipe, 0.0)
    at0 = conditioning.predict_noise(pipe, z0, t, text, rows)
    conditioning.set_adapter_scale(pipe, 0.8)
    at8 = conditioning.predict_noise(pipe, z0, t, text, rows)
    assert (at8 - at0).abs().max().item() > 1e-3

    plain = load_pipeline(dataclasses.replace(tiny_spec, adapter=None))
    assert not conditioning.has_adapter(plain)
    no_adapter = conditioning.predict_noise(plain, z0, t, text, None)
    assert (no_adapter - at0).abs().max().item() < 1e-5


def test_saved_and_offline_loaded_model_matches_in_memory(tiny_model_dir, engine, photo, monkeypatch):
    from tight_pipeline.testing.tiny_models import build_tiny_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe, vision, state = build_tiny_pipeline(0, tokenizer_dir=tiny_model_dir / "tokenizer")
    from transformers import CLIPImageProcessor

    pipe.register_modules(image_encoder=vision, feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    split = {"image_proj": {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")},
             "ip_adapter": {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")}}
    pipe.load_ip_adapter(split, subfolder="", weight_name="", image_encoder_folder=None)
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    in_memory = TightInversion(pipe, engine.spec)
    preset = dataclasses.replace(load_preset("balanced"), steps=5)
    a = in_memory.edit_item(photo, "a cup of coffee", [("x", "a red cup")], preset)
    b = engine.edit_item(photo, "a cup of coffee", [("x", "a red cup")], preset)
    import numpy as np

    for x, y in ((a.reconstruction, b.reconstruction), (a.edits["x"], b.edits["x"])):
        diff = np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int))
        print(f"in memory vs loaded: max |diff| = {diff.max()} (8-bit), mean {diff.mean():.4f}")
        assert diff.max() <= 1  # same weights; only float summation order may differ


def test_one_inversion_batched_edits_equal_separate_runs(engine, photo):
    preset = dataclasses.replace(load_preset("balanced"), steps=6)
    both = engine.edit_item(photo, "a cup of coffee", [("blue", "a blue cup"), ("red", "a red cup")], preset)
    blue = engine.edit_item(photo, "a cup of coffee", [("blue", "a blue cup")], preset)
    red = engine.edit_item(photo, "a cup of coffee", [("red", "a red cup")], preset)
    import numpy as np

    for name, single in (("blue", blue), ("red", red)):
        diff = np.abs(np.asarray(both.edits[name], dtype=int) - np.asarray(single.edits[name], dtype=int)).max()
        assert diff <= 1, name  # batching may change float rounding, never the result
    assert np.abs(np.asarray(both.edits["blue"], dtype=int) - np.asarray(both.edits["red"], dtype=int)).max() > 5
    assert both.edit_scores["blue"]["edit_change"] > 0


def test_different_inversion_and_edit_scales_run_as_two_batches(engine, photo):
    preset = dataclasses.replace(load_preset("balanced"), steps=4, inversion_scale=0.6, edit_scale=0.2)
    result = engine.edit_item(photo, "a cup", [("a", "a red cup")], preset)
    same = engine.edit_item(photo, "a cup", [("a", "a red cup")], dataclasses.replace(preset, edit_scale=0.6))
    import numpy as np

    def max_diff(x, y):
        return np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max()

    assert max_diff(result.reconstruction, same.reconstruction) <= 1  # reconstruction uses the inversion scale
    assert max_diff(result.edits["a"], same.edits["a"]) > 5  # edits use the edit scale


def test_bad_prompts_and_shapes_are_input_errors(engine, photo):
    preset = dataclasses.replace(load_preset("draft"), steps=2)
    with pytest.raises(InputError, match="source prompt must be text"):
        engine.edit_item(photo, None, [("a", "x")], preset)
    # empty prompts are the model's empty prompt (zero text embeds on SDXL), as the authors' pipelines take them
    blank = engine.edit_item(photo, "  ", [("a", "a red cup"), ("e", "")], preset)
    assert set(blank.edits) == {"a", "e"} and blank.scores["psnr_vs_vae"] > 5
    assert [w for w in blank.warnings if "same as its negative prompt" in w and "'e'" in w]
    text = conditioning.embed_text(engine.pipe, ["", " ", "a cup"], 64, 64)
    assert torch.equal(text.embeds[0], text.embeds[1]) and not torch.equal(text.embeds[0], text.embeds[2])
    before = engine.pipe.config.get("force_zeros_for_empty_prompt", False)
    engine.pipe.register_to_config(force_zeros_for_empty_prompt=True)  # what SDXL base ships with
    try:
        text = conditioning.embed_text(engine.pipe, ["", " ", "a cup"], 64, 64)
    finally:
        engine.pipe.register_to_config(force_zeros_for_empty_prompt=before)
    assert float(text.embeds[:2].abs().max()) == 0.0 and float(text.pooled[:2].abs().max()) == 0.0
    assert float(text.embeds[2].abs().max()) > 0.0
    with pytest.raises(InputError, match="aspect ratio"):
        fit_size(4000, 100, 64, 4)
    long = engine.edit_item(photo, "cup " * 200, [("a", "a cup")], preset)
    assert any("tokens" in w for w in long.warnings)
    assert fit_size(640, 480, 64, 4) == (72, 56)


def test_model_errors_name_what_is_missing(tmp_path, tiny_model_dir):
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model_spec("no-such-model")
    with pytest.raises(ModelError, match="does not exist"):
        load_pipeline(resolve_model_spec(str(tiny_model_dir), base=str(tmp_path / "missing")))
    with pytest.raises(ModelError, match="pickle"):
        resolve_model_spec(str(tiny_model_dir), adapter_weight="ip-adapter.bin")
    with pytest.raises(ModelError, match="not on this machine"):
        load_pipeline(resolve_model_spec("sdxl-ip-plus", device="cpu", dtype="float32"))


def test_edit_friendly_ddpm_reconstructs_exactly_with_image_embeds(engine, photo):
    import numpy as np

    preset = dataclasses.replace(load_preset("edit-friendly"), steps=12)
    result = engine.edit_item(photo, "a cup of coffee", [("tea", "a cup of green tea")], preset)
    print(f"ddpm_ef reconstruction {result.scores['psnr_vs_vae']:.1f} dB vs VAE")
    assert result.scores["psnr_vs_vae"] >= 60.0
    assert result.edit_scores["tea"]["edit_change"] > 0.01  # the maps do not freeze the edit
    again = engine.edit_item(photo, "a cup of coffee", [("tea", "a cup of green tea")], preset)
    assert np.array_equal(np.asarray(again.edits["tea"]), np.asarray(result.edits["tea"]))  # seeded
    other = engine.edit_item(photo, "a cup of coffee", [("tea", "a cup of green tea")], dataclasses.replace(preset, seed=1))
    assert not np.array_equal(np.asarray(other.edits["tea"]), np.asarray(result.edits["tea"]))


def test_edit_friendly_noise_maps_see_the_image_condition(engine, photo):
    pipe, _, z0, text, rows, schedule = _setup(engine, photo, scale=0.0, steps=6)
    _, maps0 = inversion.invert_ddpm_ef(pipe, z0, schedule, text, rows, seed=0)
    conditioning.set_adapter_scale(pipe, 0.8)
    _, maps8 = inversion.invert_ddpm_ef(pipe, z0, schedule, text, rows, seed=0)
    assert len(maps0) == 6 and max((a - b).abs().max().item() for a, b in zip(maps0, maps8)) > 1e-3


def test_source_as_negative_equals_the_source_prompt_as_negative_prompt(engine, photo):
    """The authors' "use source as negative" switch: each edit's unconditional branch is its item's source
    prompt; the same as writing that prompt into negative_prompt, and different from the empty negative."""
    import dataclasses

    import numpy as np

    from tight_pipeline.method.presets import load_preset

    base = dataclasses.replace(load_preset("balanced"), steps=4)
    edits = [("tea", "a cup of green tea")]
    switch = engine.edit_item(photo, "a cup of coffee", edits, dataclasses.replace(base, negative_source=True))
    spelled = engine.edit_item(photo, "a cup of coffee", edits, dataclasses.replace(base, negative_prompt="a cup of coffee"))
    plain = engine.edit_item(photo, "a cup of coffee", edits, base)
    a, b, c = (np.asarray(r.edits["tea"], dtype=int) for r in (switch, spelled, plain))
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - c).mean() > 0.5
    assert dataclasses.replace(base, negative_source=True).hash != base.hash
    assert "negative_source" not in load_preset("balanced").settings()  # off: left out of the hash, hashes unchanged


def test_cfg_sharpening_reaches_the_edits_and_leaves_the_reconstruction(engine, photo):
    """The authors' CFG sharpening as a preset field: it changes the guided edits, never the reconstruction
    (guidance 1, no difference to sharpen); the formula itself is checked by hand in tests/test_parity.py."""
    import dataclasses

    import numpy as np

    from tight_pipeline.method.presets import load_preset

    base = dataclasses.replace(load_preset("balanced"), steps=4)
    edits = [("tea", "a cup of green tea")]
    plain = engine.edit_item(photo, "a cup of coffee", edits, base)
    sharp = engine.edit_item(photo, "a cup of coffee", edits, dataclasses.replace(base, cfg_sharpening=0.5))
    assert np.array_equal(np.asarray(plain.reconstruction), np.asarray(sharp.reconstruction))
    assert np.abs(np.asarray(plain.edits["tea"], dtype=int) - np.asarray(sharp.edits["tea"], dtype=int)).mean() > 0.5
