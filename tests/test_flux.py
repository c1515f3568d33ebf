"""FLUX + XLabs IP-Adapter + RF-Inversion on a tiny random FLUX written in the real layouts."""

from __future__ import annotations

from tight_pipeline.data import scores

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from tight_pipeline.demo_model.products import ProductSpec, render_product
from tight_pipeline.method import flux, rf_inversion
from tight_pipeline.method.metrics import psnr
from tight_pipeline.method.items import InputError
from tight_pipeline.method.presets import Preset, load_preset


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    from tight_pipeline.testing.tiny_models import make_tiny_flux_model

    return make_tiny_flux_model(tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="session")
def flux_engine(flux_dir):
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine

    return load_engine(resolve_model_spec(str(flux_dir), device="cpu"))


@pytest.fixture(scope="session")
def shot():
    return render_product(ProductSpec.sample(3, 1))


def _preset(**kw) -> Preset:
    base = dict(name="t", method="rf_inversion", steps=10, inversion_scale=0.4, edit_scale=0.4, guidance=2.0)
    return Preset(**{**base, **kw})


def test_loads_flux_pipeline_with_xlabs_adapter(flux_engine, flux_dir):
    from diffusers import FluxPipeline

    assert isinstance(flux_engine, flux.FluxTightInversion)
    assert isinstance(flux_engine.pipe, FluxPipeline)
    assert flux.has_adapter(flux_engine.pipe)
    assert (flux_dir / "ip_adapter" / "ip_adapter.safetensors").exists()
    from safetensors import safe_open

    with safe_open(str(flux_dir / "ip_adapter" / "ip_adapter.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "ip_adapter_proj_model.proj.weight" in keys
    assert "double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight" in keys


def test_fixed_point_rf_inversion_reconstructs_over_40_db(flux_engine, shot):
    plain = flux_engine.edit_item(shot.image, shot.caption, [], _preset(gamma=0.0, fixed_point_iterations=0))
    refined = flux_engine.edit_item(shot.image, shot.caption, [], _preset(gamma=0.0, fixed_point_iterations=4))
    assert refined.scores["psnr_vs_vae"] >= 40.0
    assert refined.scores["psnr_vs_vae"] > plain.scores["psnr_vs_vae"] + 5


def _inverted(flux_engine, shot, preset):
    e = flux_engine
    fitted = e.prepare_image(shot.image)
    z0 = e.encode(fitted)
    y0 = e.pack(z0)
    ids = e.pipe._prepare_latent_image_ids(1, z0.shape[-2] // 2, z0.shape[-1] // 2, e.device, e.dtype)
    text = flux.embed_text(e.pipe, [shot.caption])
    pos, neg = flux.embed_image(e.pipe, fitted)
    sigmas, timesteps = flux.flux_sigmas(e.pipe, preset.steps, y0.shape[1])
    e._set_scale(preset.inversion_scale)
    velocity = e.velocity_fn(text, pos, ids, timesteps, None)
    x1 = rf_inversion.invert_rf(velocity, y0, sigmas, fixed_point_iterations=preset.fixed_point_iterations)
    return fitted, y0, x1, text, pos, neg, velocity, sigmas


def test_explicit_sampler_matches_flux_pipeline_call(flux_engine, shot):
    preset = _preset(fixed_point_iterations=2, steps=8)
    fitted, y0, x1, text, pos, _, velocity, sigmas = _inverted(flux_engine, shot, preset)
    ours = rf_inversion.denoise_rf(velocity, x1, sigmas)
    theirs = flux_engine.pipe(
        prompt=shot.caption, latents=x1, num_inference_steps=preset.steps, height=fitted.height, width=fitted.width,
        ip_adapter_image_embeds=[pos], output_type="latent", max_sequence_length=flux.max_text_tokens(flux_engine.pipe),
    ).images
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() < 1e-3


def test_adapter_scale_changes_the_prediction(flux_engine, shot):
    preset = _preset()
    _, y0, _, text, pos, _, velocity, _ = _inverted(flux_engine, shot, preset)
    flux_engine._set_scale(0.0)
    at_zero = velocity(y0, 3)
    flux_engine._set_scale(0.8)
    at_high = velocity(y0, 3)
    assert (at_high - at_zero).abs().max().item() > 1e-4


def test_gamma_pulls_inversion_towards_the_target_noise(shot, flux_engine):
    preset = _preset()
    _, y0, _, _, _, _, velocity, sigmas = _inverted(flux_engine, shot, preset)
    noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(0))
    dist = {g: (rf_inversion.invert_rf(velocity, y0, sigmas, gamma=g, target_noise=noise) - noise).norm().item()
            for g in (0.0, 0.5, 1.0)}
    assert dist[1.0] < 1e-3 * noise.norm().item()  # gamma 1 lands exactly on the target
    assert dist[1.0] < dist[0.5] < dist[0.0]


def test_eta_keeps_edits_closer_to_the_input(flux_engine, shot):
    edit = [("blue", shot.caption.replace(shot.spec.colour, "blue"))]
    free = flux_engine.edit_item(shot.image, shot.caption, edit, _preset(eta=0.0))
    held = flux_engine.edit_item(shot.image, shot.caption, edit, _preset(eta=0.9, eta_stop=1.0))
    # random VAE: compare in its own space, against the VAE round-trip of the input
    to_input = {name: psnr(r.edits["blue"], r.vae_roundtrip) for name, r in (("free", free), ("held", held))}
    assert to_input["held"] > to_input["free"] + 3.0


def test_family_and_method_mismatch_is_a_clear_input_error(flux_engine, engine, shot):
    with pytest.raises(InputError, match="SD/SDXL method"):
        flux_engine.edit_item(shot.image, shot.caption, [], load_preset("draft"))
    with pytest.raises(InputError, match="FLUX method"):
        engine.edit_item(shot.image, shot.caption, [], load_preset("flux-draft"))


def test_flux_presets_load_and_old_hashes_are_stable():
    balanced = load_preset("flux-balanced")
    assert balanced.method == "rf_inversion" and balanced.gamma == 0.5 and balanced.inversion_prompt == "empty"
    # a preset that leaves the FLUX fields at their defaults hashes as before they existed
    sdxl = load_preset("balanced")
    assert "gamma" not in sdxl.settings() and "eta" in balanced.settings()
    assert dataclasses.replace(sdxl, eta=0.5).hash != sdxl.hash


@pytest.mark.drill  # end to end through Ray (and Prefect): make drills (make test stays under 7 minutes)
def test_run_with_a_flux_spec_end_to_end(tmp_path, flux_dir, ray_session, prefect_harness):
    """The catalog flow over the demo manifest with a FLUX spec and no preset: the family's default, Parquet rows and
    MLflow metrics like SDXL (the command line around it is the same for every family: tests/test_cli.py runs it)."""
    import json

    import mlflow

    from flows.catalog_localization import catalog_localization
    from tight_pipeline.reporting import tracking
    from tight_pipeline.demo import write_demo_inputs

    manifest = write_demo_inputs(str(tmp_path / "in"))
    out = tmp_path / "out"
    # no preset: the flow takes the FLUX family's default (a deployment once ran FLUX with the SDXL default)
    summary = catalog_localization(manifest=manifest, output=str(out), model=str(flux_dir))
    rows = scores.read_latest(str(out))
    n_edits = sum(len(json.loads(line)["locales"]) for line in (tmp_path / "in" / "manifest.jsonl").read_text().splitlines())
    assert len(rows) == n_edits and set(rows["status"]) == {"ok"} and summary["status_ok"] == n_edits
    assert set(rows["preset"]) == {"flux-balanced"} and rows["psnr_vs_vae"].notna().all()
    mlflow.set_tracking_uri(tracking.tracking_uri())
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["rows_ok"] == n_edits and run.data.metrics["psnr_vs_vae_mean"] > 0
    assert run.data.params["model.family"] == "flux" and run.data.params["preset.method"] == "rf_inversion"


def test_batched_flux_items_equal_one_item_runs(flux_engine, flux_dir):
    """RF-Inversion of three same-size items (2, 0 and 1 edits) in one batch, transformer calls of 2 rows."""
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.factory import load_engine

    chunked = load_engine(resolve_model_spec(str(flux_dir), device="cpu", max_batch=2, vae_batch=2))
    preset = _preset(steps=6, gamma=0.5, eta=0.7, eta_stop=0.5, fixed_point_iterations=1)
    shots = [render_product(ProductSpec.sample(i, 3)).image for i in range(3)]
    requests = [ItemRequest(shots[0], "a red mug", [("blue", "a blue mug"), ("dots", "a dotted mug")]),
                ItemRequest(shots[1], "a green bottle", []),
                ItemRequest(shots[2], "a yellow box", [("red", "a red box")])]
    batched = chunked.edit_items(requests, preset)
    for r, b in zip(requests, batched):
        a = flux_engine.edit_item(r.image, r.source_prompt, r.edits, preset)
        assert not isinstance(b, BaseException), b
        for x, y in [(a.reconstruction, b.reconstruction)] + [(a.edits[k], b.edits[k]) for k in a.edits]:
            assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 1
    assert batched[0].timings.batch_items == 3


def test_the_zero_shot_judge_of_automatic_strength_on_flux(flux_engine, shot):
    from tight_pipeline.method.auto import strength
    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.presets import load_preset

    image, caption = shot.image, shot.caption
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    both = flux_engine.prompt_errors([image, flipped, image], [caption, "a blue mug", "a red car"])
    assert all(e > 0 for e in both) and both[0] != both[2]
    assert flux_engine.prompt_errors([flipped], ["a blue mug"])[0] == pytest.approx(both[1], rel=1e-4)  # batch-free
    result = strength.edit_items_auto(flux_engine, [ItemRequest(image, caption, [("b", "a blue mug")])],
                                      load_preset("flux-draft@auto"))[0]
    scores = result.edit_scores["b"]
    assert scores["auto_judge"] == "diffusion" and scores["adapter_scale"] in (1.0, 0.4, 0.0)


def test_a_flux_reconstruction_brought_by_the_request_is_kept(flux_engine, shot):
    from tight_pipeline.method.items import ItemRequest

    preset = _preset(steps=4)
    request = ItemRequest(shot.image, shot.caption, [("b", "a blue mug")])
    full = flux_engine.edit_items([request], preset)[0]
    again = flux_engine.edit_items([ItemRequest(request.image, request.source_prompt, request.edits,
                                                full.reconstruction)], preset)[0]
    assert again.reconstruction.tobytes() == full.reconstruction.tobytes()
    assert np.abs(np.asarray(again.edits["b"], dtype=int) - np.asarray(full.edits["b"], dtype=int)).max() <= 1


def test_full_size_flux_that_bench_gpu_builds_is_flux1_dev_on_the_meta_device():
    """``bench_gpu.py --family flux`` builds FLUX.1-dev's architecture on a GPU; here on the meta device (shapes, no
    memory): the published parameter counts, the XLabs adapter's shapes against the transformer, and a 1024-px
    forward pass (4096 image tokens, 512 T5 tokens) of the transformer and the T5 encoder."""
    import torch

    from tight_pipeline.testing.tiny_models import build_tiny_flux

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            pipe, vision, state = build_tiny_flux(0, size="full")
    finally:
        torch.set_default_dtype(previous)

    def billions(module):
        return round(sum(p.numel() for p in module.parameters()) / 1e9, 2)

    assert (billions(pipe.transformer), billions(pipe.text_encoder_2)) == (11.9, 4.76)  # FLUX.1-dev, T5-XXL encoder
    assert billions(vision) == 0.3 and pipe.tokenizer_2.model_max_length == 512
    doubles = [k for k in state if k.startswith("double_blocks.")]
    assert len(doubles) == 19 * 4 and state["double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight"].shape == (3072, 4096)
    assert state["ip_adapter_proj_model.proj.weight"].shape == (4 * 4096, 768)
    bf16 = dict(dtype=torch.bfloat16)
    with torch.device("meta"):
        out = pipe.transformer(hidden_states=torch.empty(1, 4096, 64, **bf16),
                               encoder_hidden_states=torch.empty(1, 512, 4096, **bf16),
                               pooled_projections=torch.empty(1, 768, **bf16), timestep=torch.empty(1, **bf16),
                               img_ids=torch.empty(4096, 3), txt_ids=torch.empty(512, 3),
                               guidance=torch.empty(1, **bf16), return_dict=False)[0]
        text = pipe.text_encoder_2(torch.zeros(1, 512, dtype=torch.long)).last_hidden_state
    assert out.shape == (1, 4096, 64) and text.shape == (1, 512, 4096)
