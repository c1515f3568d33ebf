"""Scores: PSNR/SSIM behave, and the CLIP scorer works from a local folder (a tiny random CLIP here)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tight_pipeline.method import metrics


def test_psnr_and_ssim_move_the_right_way(photo):
    small = photo.resize((96, 64))
    noisy = Image.fromarray(np.clip(np.asarray(small, dtype=int) + np.random.default_rng(0).normal(0, 20, (64, 96, 3)), 0, 255).astype(np.uint8))
    assert metrics.psnr(small, small) == 100.0 and metrics.ssim(small, small) == pytest.approx(1.0)
    assert 15 < metrics.psnr(small, noisy) < 30 and metrics.ssim(small, noisy) < 0.9
    assert metrics.mean_abs_change(small, noisy) > 0.03


def test_clip_scorer_from_a_local_folder(tmp_path, tiny_model_dir, photo):
    import shutil

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=600, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=4),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    for f in (tiny_model_dir / "tokenizer").iterdir():
        shutil.copy(f, tmp_path / "clip" / f.name)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "clip")
    scorer = metrics.ClipScorer(tmp_path / "clip")
    scores = scorer.score([photo, photo], ["a cup of coffee", "a rocket at night"])
    assert all(-1.0 <= s <= 1.0 for s in scores) and scores[0] != scores[1]
    assert scorer.score([photo], ["a cup of coffee"])[0] == pytest.approx(scores[0], abs=1e-5)
