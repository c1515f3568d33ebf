"""The catalog demo model: synthetic shots, the SDXL + IP-Adapter Plus layout, training, evaluation, and the
shipped weights (loaded through the same code path as real SDXL weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tight_pipeline.demo_model import products
from tight_pipeline.demo_model.products import COLOURS, ProductSpec, render_product


def test_shots_are_deterministic_captioned_and_masked():
    a = render_product(ProductSpec.sample(0, 5))
    b = render_product(ProductSpec.sample(0, 5))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.caption == b.caption
    assert a.image.size == (64, 64) and a.mask.shape == (64, 64) and 0.03 < a.mask.mean() < 0.5
    assert a.caption.startswith(f"a {a.spec.colour} ") and a.caption.endswith(f"on a {a.spec.background} background")
    assert ProductSpec.sample(0, 5) != ProductSpec.sample(1, 5)


def test_colour_and_shape_scores_read_the_truth_from_clean_shots():
    shots = [render_product(ProductSpec.sample(7, i)) for i in range(40)]
    assert all(products.dominant_colour(s.image, s.mask) == s.spec.colour for s in shots)
    ious = [products.iou(products.product_region(s.image, s.background), s.mask) for s in shots]
    assert min(ious) > 0.85
    # a recoloured shot is read as its new colour; a shot with the product gone has no product region
    blue = render_product(shots[0].spec.with_colour("blue" if shots[0].spec.colour != "blue" else "red"))
    assert products.dominant_colour(blue.image, blue.mask) == blue.spec.colour
    assert products.product_region(shots[0].background, shots[0].background).sum() == 0


def test_tokenizer_has_every_caption_word_as_one_token(tmp_path):
    from tight_pipeline.demo_model.architecture import build_tokenizer

    tok = build_tokenizer(tmp_path / "tok")
    for word in products.vocabulary():
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))  # start, word, end
    assert tok.unk_token_id not in tok("a teal dotted bottle on a mint background").input_ids[1:-1]


def test_saved_model_loads_through_load_pipeline_unchanged(tmp_path):
    """In-memory model == what load_pipeline reads back (h94 adapter file, separate image encoder)."""
    from diffusers import StableDiffusionXLPipeline

    from tight_pipeline.demo_model.architecture import (adapter_state_h94, build_components, build_tokenizer,
                                                        init_adapter, save_demo_model)
    from tight_pipeline.engine.models import load_pipeline, resolve_model_spec

    parts, encoder = build_components(0, build_tokenizer(tmp_path / "tok"))
    pipe = StableDiffusionXLPipeline(**parts, image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=False)
    init_adapter(pipe.unet, encoder, 1)
    save_demo_model(pipe, encoder, tmp_path / "model")
    loaded = load_pipeline(resolve_model_spec(str(tmp_path / "model"), device="cpu"))
    ours, theirs = adapter_state_h94(pipe.unet, encoder), adapter_state_h94(loaded.unet, loaded.image_encoder)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(1, 4, 16, 16)
    emb = torch.randn(1, 16, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
             "image_embeds": [torch.randn(1, 1, 65, 64)]}
    for p in (pipe, loaded):
        p.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        a = pipe.unet(x, 10, encoder_hidden_states=emb, added_cond_kwargs=added).sample
        b = loaded.unet(x, 10, encoder_hidden_states=emb, added_cond_kwargs=added).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_training_is_resumable_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from tight_pipeline.demo_model.train import Paused, TrainConfig, train_demo_model

    config = TrainConfig(train_images=48, vae_steps=2, unet_steps=3, decoder_steps=2, vae_batch=4, unet_batch=4,
                         warmup=1, checkpoint_every=100)
    train_demo_model(tmp_path / "a", tmp_path / "work-a", config, progress=False, log=lambda *_: None)
    with pytest.raises(Paused):
        train_demo_model(tmp_path / "b", tmp_path / "work-b", config, progress=False, log=lambda *_: None, max_steps=4)
    record = train_demo_model(tmp_path / "b", tmp_path / "work-b", config, progress=False, log=lambda *_: None)
    assert len(record["loss"]["unet"]) == 3 and len(record["loss"]["decoder"]) == 2
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "ip_adapter/sdxl_models/ip-adapter-plus_catalog-demo.safetensors"):
        a, b = load_file(tmp_path / "a" / part), load_file(tmp_path / "b" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part
    with pytest.raises(ValueError, match="different config"):
        train_demo_model(tmp_path / "c", tmp_path / "work-a", TrainConfig(train_images=49), progress=False)
