"""Few-step models: the Euler-ancestral and LCM steps and ReNoise's noise correction against diffusers and by hand,
CFG++, the tiny model in SDXL-Turbo's layout through the engine (batched == one item) and through `run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tight_pipeline.method import inversion


def _turbo_scheduler():
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="trailing", num_train_timesteps=1000)


def test_schedule_of_a_turbo_scheduler_is_trailing_and_ends_clean():
    schedule = inversion.make_schedule(_turbo_scheduler(), 4, "euler_ancestral")
    assert schedule.timesteps == [999, 749, 499, 249] and schedule.step_ratio == 250
    assert schedule.alpha(-1) == 1.0 and schedule.sampler == "euler_ancestral"


def test_ancestral_step_by_hand():
    # ᾱ_t = 0.5 (σ_t = 1), ᾱ_prev = 0.8 (σ_prev = 0.5): σ_up = sqrt(0.25 · 0.75) = 0.4330, σ_down = 0.25
    s_t, s_prev, s_up, s_down = inversion.ancestral_sigmas(0.5, 0.8)
    assert (s_t, s_prev, s_up, s_down) == pytest.approx((1.0, 0.5, 0.1875**0.5, 0.25))
    z = torch.full((1, 1, 1, 1), 0.5**0.5)  # x = 1
    out = inversion.ancestral_move(z, torch.full_like(z, 0.2), 0.5, 0.8, "epsilon", torch.full_like(z, 0.1))
    assert float(out) == pytest.approx(0.8**0.5 * (1 + 0.2 * (0.25 - 1) + 0.1 * 0.1875**0.5))


def _walk(scheduler, schedule, to_theirs=lambda z, a: z, from_theirs=lambda x, a: x):
    """diffusers' steps over ``schedule`` from one random latent, each with a seeded noise: yields (k, t, z, ε, noise,
    theirs), ``theirs`` being diffusers' step from z with that noise, in our (variance-preserving) latents."""
    scheduler.set_timesteps(len(schedule.timesteps))
    rng = torch.Generator().manual_seed(0)
    z = torch.randn((2, 4, 8, 8), generator=rng)
    for k, t in enumerate(schedule.timesteps):
        eps = torch.randn(z.shape, generator=rng)
        x = to_theirs(z, schedule.alpha(t))
        scheduler.scale_model_input(x, scheduler.timesteps[k])
        step = scheduler.step(eps, scheduler.timesteps[k], x, generator=torch.Generator().manual_seed(k)).prev_sample
        theirs = from_theirs(step, schedule.alpha(schedule.below(t)))
        yield k, t, z, eps, torch.randn(z.shape, generator=torch.Generator().manual_seed(k)), theirs
        z = theirs


def test_ancestral_step_equals_diffusers_euler_ancestral_with_the_same_noise():
    schedule = inversion.make_schedule(_turbo_scheduler(), 4, "euler_ancestral")
    # the Euler scheduler's own sample is variance-exploding: x = z / sqrt(ᾱ)
    for _k, t, z, eps, noise, theirs in _walk(_turbo_scheduler(), schedule, lambda z, a: z / a**0.5,
                                             lambda x, a: x * a**0.5):
        ours = inversion.ancestral_move(z, eps, schedule.alpha(t), schedule.alpha(schedule.below(t)), "epsilon", noise)
        assert torch.allclose(ours, theirs, atol=1e-5), (t, float((ours - theirs).abs().max()))


def test_noise_correction_lands_on_the_target():
    rng = torch.Generator().manual_seed(1)
    sample, eps, target = (torch.randn((1, 4, 8, 8), generator=rng) for _ in range(3))
    noise = inversion.ancestral_noise(sample, eps, 0.3, 0.6, target)
    assert torch.allclose(inversion.ancestral_move(sample, eps, 0.3, 0.6, "epsilon", noise), target, atol=1e-5)
    assert not inversion.ancestral_noise(sample, eps, 0.3, 1.0, target).any()  # the last step adds no noise


def _lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def test_lcm_schedule_takes_lcm_timesteps_from_any_scheduler_config():
    for source in (_lcm_scheduler(), _turbo_scheduler()):
        schedule = inversion.make_schedule(source, 4, "lcm")
        assert schedule.timesteps == [999, 759, 499, 259]  # 4 of LCM's 50-step grid (diffusers' LCMScheduler)
        assert [schedule.below(t) for t in schedule.timesteps] == [759, 499, 259, -1] and schedule.alpha(-1) == 1.0
    with pytest.raises(ValueError, match="at most 50 steps"):
        inversion.make_schedule(_lcm_scheduler(), 60, "lcm")
    c_skip, c_out = inversion.make_schedule(_lcm_scheduler(), 4, "lcm").boundary(259)
    assert c_skip == pytest.approx(0.25 / (2590**2 + 0.25)) and c_out == pytest.approx(2590 / (2590**2 + 0.25) ** 0.5)


def test_lcm_step_equals_diffusers_lcm_with_the_same_noise_and_its_correction_lands():
    schedule = inversion.make_schedule(_lcm_scheduler(), 4, "lcm")
    for k, t, z, eps, noise, theirs in _walk(_lcm_scheduler(), schedule):
        ours = inversion.noised_move(schedule, t, z, eps, noise)
        assert torch.allclose(ours, theirs, atol=1e-5), (t, float((ours - theirs).abs().max()))
        # the inverse: from the landing point and the same ε and map back to z, and the correction's map is the noise
        start, correct = inversion._corrected_step(schedule, t)
        assert torch.allclose(start(eps, ours, noise), z, atol=1e-4)
        if k < 3:
            assert torch.allclose(correct(z, eps, ours), noise, atol=1e-4)
        else:
            assert not correct(z, eps, ours).any()  # the last step lands on the estimate itself


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory):
    from tight_pipeline.testing.tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("turbo") / "tiny-sdxl-turbo", turbo=True)


@pytest.fixture(scope="module")
def turbo_engine(turbo_dir):
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.specs import resolve_model_spec

    return load_engine(resolve_model_spec(str(turbo_dir), device="cpu"))


def test_tiny_turbo_loads_with_its_scheduler(turbo_dir, turbo_engine):
    from diffusers import EulerAncestralDiscreteScheduler

    from tight_pipeline.method.specs import ModelError, resolve_model_spec

    spec = resolve_model_spec(str(turbo_dir))
    assert spec.scheduler == "euler_ancestral" and isinstance(turbo_engine.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert spec.digest != resolve_model_spec(str(turbo_dir), scheduler="ddim").digest
    with pytest.raises(ModelError, match="unknown scheduler 'dpm'"):
        resolve_model_spec(str(turbo_dir), scheduler="dpm")
    with pytest.raises(ModelError, match="lora .*nowhere.safetensors does not exist"):
        from tight_pipeline.method.models import load_pipeline

        load_pipeline(resolve_model_spec(str(turbo_dir), lora=str(turbo_dir / "nowhere.safetensors")))


def _latents(engine, photo, preset):
    from tight_pipeline.method import conditioning

    pipe = engine.pipe
    fitted = engine.prepare_image(photo)
    z0 = engine.encode(fitted)
    text = conditioning.embed_text(pipe, ["a photo"], fitted.height, fitted.width)
    embeds = conditioning.embed_image(pipe, fitted)
    conditioning.set_adapter_scale(pipe, preset.inversion_scale)
    return pipe, z0, text, embeds.positive


@pytest.mark.parametrize("name, timesteps, factor", [("turbo-balanced", [999, 749, 499, 249], 20),
                                                     ("lcm-balanced", [999, 759, 499, 259], 5)])
def test_noise_corrected_inversion_reconstructs(turbo_engine, photo, name, timesteps, factor):
    """The Euler-ancestral (Turbo's trailing timesteps) and the LCM step (LCM's own) inverted by ReNoise with the
    correction: denoising with the corrected maps lands on the inversion's own latents at every step but the last
    (which adds no noise to correct), and ends far closer to z_0 than with the maps drawn before the correction
    (the last step only the fixed point closes: a random-weight model converges loosely, 0.66 vs 32.6 for Turbo)."""
    from tight_pipeline.method import editing
    from tight_pipeline.method.conditioning import predict_noise
    from tight_pipeline.method.presets import load_preset

    preset = load_preset(name)
    pipe, z0, text, image = _latents(turbo_engine, photo, preset)
    schedule = inversion.make_schedule(pipe.scheduler, preset.steps, preset.sampler)
    trajectory = {}
    z_T, maps = inversion.invert_renoise_corrected(pipe, z0, schedule, text, image, iterations=4, average_last=2,
                                                   trajectory=trajectory)
    assert schedule.timesteps == timesteps and len(maps) == 4 and not maps[-1].any()
    z = z_T
    for i, t in enumerate(schedule.timesteps[:-1]):  # step by step: each corrected step lands on the level below it
        z = inversion.noised_move(schedule, t, z, predict_noise(pipe, z, t, text, image), maps[i])
        below = trajectory[schedule.below(t)]
        assert torch.allclose(z, below, atol=1e-3), (t, float((z - below).abs().max()))
    rec = editing.denoise(pipe, z_T, schedule, text, image, 1, 0, 1.0, noises=maps)
    drawn = [torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)) for _ in maps]
    off = editing.denoise(pipe, z_T, schedule, text, image, 1, 0, 1.0, noises=drawn)
    err, err_off = float((rec - z0).abs().max()), float((off - z0).abs().max())
    assert err < err_off / factor, (err, err_off)


def test_cfgpp_step_by_hand_and_at_zero_is_the_unconditional_step(turbo_engine, photo):
    """CFG++: x0 from the guided prediction, re-noised with the unconditional noise. One DDIM step by hand at λ = 0.6;
    at λ = 0 a guided row is exactly the plain DDIM row of the unconditional prompt."""
    from tight_pipeline.method import conditioning, editing
    from tight_pipeline.method.conditioning import predict_noise
    from tight_pipeline.method.presets import load_preset

    pipe, z0, text, image = _latents(turbo_engine, photo, load_preset("turbo-balanced"))
    negative = conditioning.embed_text(pipe, [""], 64, 64)
    both = conditioning.TextCondition.cat([negative, text])
    schedule = inversion.make_schedule(pipe.scheduler, 1)  # one step: t = 999 (trailing) down to the clean end
    t, pt = schedule.timesteps[0], schedule.prediction_type
    a_t, a_prev = schedule.alpha(t), schedule.alpha(schedule.below(t))
    z = torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
    out_u, out_c = predict_noise(pipe, z, t, negative, image), predict_noise(pipe, z, t, text, image)
    x0_g, _ = inversion.split_prediction(out_u + 0.6 * (out_c - out_u), z, a_t, pt)
    _, eps_u = inversion.split_prediction(out_u, z, a_t, pt)
    by_hand = a_prev**0.5 * x0_g + (1 - a_prev) ** 0.5 * eps_u
    ours = editing.denoise(pipe, z, schedule, both, torch.cat([image, image]), 0, 1, 0.6, cfgpp=True)
    plain_cfg = editing.denoise(pipe, z, schedule, both, torch.cat([image, image]), 0, 1, 0.6)
    assert torch.allclose(ours, by_hand, atol=1e-4) and not torch.allclose(ours, plain_cfg, atol=1e-3)
    schedule = inversion.make_schedule(pipe.scheduler, 4)
    zero = editing.denoise(pipe, z, schedule, both, torch.cat([image, image]), 0, 1, 0.0, cfgpp=True)
    uncond = editing.denoise(pipe, z, schedule, negative, image, 1, 0, 1.0)
    assert torch.allclose(zero, uncond, atol=1e-4)


def test_cfgpp_preset_runs_through_the_engine_and_is_checked(turbo_engine, photo):
    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.presets import Preset, PresetError, load_preset

    preset = load_preset("catalog-cfgpp")
    assert preset.guidance_mode == "cfgpp" and 0 < preset.guidance <= 1
    result = turbo_engine.edit_items([ItemRequest(photo, "a photo", [("red", "a red photo")])],
                                     Preset("c", steps=4, guidance_mode="cfgpp", guidance=0.8))[0]
    assert not isinstance(result, BaseException) and "red" in result.edits
    with pytest.raises(PresetError, match="CFG\\+\\+'s λ, a number in 0..1"):
        Preset("x", guidance_mode="cfgpp", guidance=7.5)
    with pytest.raises(PresetError, match="not the lcm sampler"):
        Preset("x", method="renoise", renoise_iterations=2, sampler="lcm", guidance_mode="cfgpp", guidance=0.5)
    with pytest.raises(PresetError, match="guidance_mode 'x'"):
        Preset("x", guidance_mode="x")
    assert load_preset("balanced").hash == Preset("b", method="ddim", steps=50, guidance=7.5).hash


def test_guidance_one_runs_the_conditional_rows_only(turbo_engine, photo):
    """A guided row at guidance 1 is the conditional prediction: equal to a plain row with the same condition."""
    from tight_pipeline.method import conditioning, editing
    from tight_pipeline.method.presets import load_preset

    pipe, z0, text, image = _latents(turbo_engine, photo, load_preset("turbo-balanced"))
    schedule = inversion.make_schedule(pipe.scheduler, 4)
    negative = conditioning.embed_text(pipe, [""], 64, 64)
    calls = []
    unet_forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(a[0].shape[0]) or unet_forward(*a, **k)
    try:
        guided = editing.denoise(pipe, z0, schedule, conditioning.TextCondition.cat([negative, text]),
                                 torch.cat([image, image]), 0, 1, 1.0)
    finally:
        pipe.unet.forward = unet_forward
    plain = editing.denoise(pipe, z0, schedule, text, image, 1, 0, 1.0)
    assert calls == [1] * 4  # one row per step, not two
    assert torch.allclose(guided, plain, atol=1e-6)


def test_turbo_presets_batched_equal_one_item(turbo_engine, photo):
    from PIL import Image

    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.presets import load_preset

    preset = load_preset("turbo-balanced")
    other = Image.fromarray(255 - np.asarray(photo.convert("RGB")))
    requests = [ItemRequest(photo, "a photo", [("red", "a red photo")]), ItemRequest(other, "a dark photo", [("b", "a blue photo")])]
    batched = turbo_engine.edit_items(requests, preset)
    alone = [turbo_engine.edit_items([r], preset)[0] for r in requests]
    for b, a in zip(batched, alone):
        assert np.abs(np.asarray(b.reconstruction, int) - np.asarray(a.reconstruction, int)).max() <= 1
        for e in a.edits:
            assert np.abs(np.asarray(b.edits[e], int) - np.asarray(a.edits[e], int)).max() <= 1
    assert batched[0].timings.batch_items == 2


def test_sampler_is_checked_in_presets():
    from tight_pipeline.method.presets import Preset, PresetError, load_preset

    assert load_preset("turbo-faithful").sampler == "euler_ancestral"
    assert load_preset("balanced").hash == Preset("x", method="ddim", steps=50, inversion_scale=0.4, edit_scale=0.4,
                                                  guidance=7.5).hash  # the new field leaves old hashes alone
    with pytest.raises(PresetError, match="sampler euler_ancestral runs with method renoise"):
        Preset("x", method="ddim", sampler="euler_ancestral")
    with pytest.raises(PresetError, match="sampler lcm runs with method renoise"):
        Preset("x", method="ddim", sampler="lcm")
    with pytest.raises(PresetError, match="at most 50 steps"):
        Preset("x", method="renoise", renoise_iterations=2, sampler="lcm", steps=60)
    with pytest.raises(PresetError, match="sampler 'lms'"):
        Preset("x", sampler="lms")


@pytest.mark.drill  # end to end through Ray (and Prefect): make drills (make test stays under 7 minutes)
def test_run_with_a_turbo_preset_end_to_end(tmp_path, turbo_dir, photo, ray_session):
    from tight_pipeline.data import scores
    from tight_pipeline.pipeline.config import JobConfig
    from tight_pipeline.pipeline.job import run_job

    photo.save(tmp_path / "p.png")
    lines = [{"item_id": f"i{k}", "image_uri": "p.png", "source_prompt": "a photo",
              "edits": [{"edit_id": "red", "prompt": "a red photo"}]} for k in range(2)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    result = run_job(JobConfig(manifest=str(tmp_path / "m.jsonl"), output=str(tmp_path / "out"),
                               preset="turbo-balanced", model=str(turbo_dir)))
    rows = scores.read_latest(str(tmp_path / "out"))
    assert result.processed_items == 2 and set(rows["status"]) == {"ok"}, rows[["status", "error"]]
    assert set(rows["preset"]) == {"turbo-balanced"} and rows["psnr_vs_vae"].notna().all()


def test_a_lora_in_the_spec_is_fused_into_the_unet(tmp_path, turbo_dir):
    """A LoRA written by diffusers (as SDXL-Lightning's and LCM-LoRA's are) is fused at load at ``lora_scale``."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tight_pipeline.method.models import load_pipeline
    from tight_pipeline.method.specs import resolve_model_spec

    base = load_pipeline(resolve_model_spec(str(turbo_dir), device="cpu"))
    unet = base.unet
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    weight = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    assert weight.exists()
    plain = {k: v.clone() for k, v in load_pipeline(resolve_model_spec(str(turbo_dir), device="cpu")).unet.state_dict().items()}
    fused = load_pipeline(resolve_model_spec(str(turbo_dir), device="cpu", lora=str(weight))).unet.state_dict()
    changed = [k for k in plain if "to_q" in k and not torch.equal(plain[k], fused[k])]
    assert changed and all(torch.equal(plain[k], fused[k]) for k in plain if "to_k" in k)
    none = load_pipeline(resolve_model_spec(str(turbo_dir), device="cpu", lora=str(weight), lora_scale=0.0)).unet.state_dict()
    assert all(torch.allclose(plain[k], none[k]) for k in changed)
    assert not any("lora" in k for k in fused)  # fused, the LoRA layers unloaded


def test_lora_references_reach_diffusers_as_a_repo_and_a_weight_name(tmp_path):
    """A LoRA named as one file of a cached repo (SDXL-Lightning ships several) is that repo + weight_name; a repo
    id alone, a local file and a missing absolute path as before. Named specs for Turbo, Lightning and LCM-LoRA."""
    from tight_pipeline.method import models
    from tight_pipeline.method.specs import ModelError, resolve_model_spec

    calls = []

    class Pipe:
        def load_lora_weights(self, where, **kwargs):
            calls.append((where, kwargs.get("weight_name")))

        def fuse_lora(self, lora_scale):
            pass

        def unload_lora_weights(self):
            pass

    local = tmp_path / "lcm.safetensors"
    local.write_bytes(b"")
    for ref in ("ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors", "latent-consistency/lcm-lora-sdxl",
                str(local)):
        models._fuse_lora(Pipe(), resolve_model_spec("tiny-sdxl", lora=ref))
    assert calls == [("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors"),
                     ("latent-consistency/lcm-lora-sdxl", None), (str(tmp_path), "lcm.safetensors")]
    with pytest.raises(ModelError, match="does not exist"):
        models._fuse_lora(Pipe(), resolve_model_spec("tiny-sdxl", lora=str(tmp_path / "none.safetensors")))
    assert resolve_model_spec("sdxl-lightning-ip").lora.endswith("4step_lora.safetensors")
    assert (resolve_model_spec("sdxl-lcm-ip").scheduler, resolve_model_spec("sdxl-turbo-ip").timestep_spacing) == ("lcm", "trailing")
