"""Scores computed offline: PSNR and SSIM always; CLIP text-image similarity only from local weights.

LPIPS needs AlexNet/VGG backbone weights and torchvision, neither of which can be obtained here; it is
reported as missing with the reason instead of being downloaded or faked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

LPIPS_MISSING = "lpips not computed: needs local AlexNet weights and torchvision, neither is installed"
CLIP_MISSING = "clip score not computed: set TIGHT_PIPELINE_CLIP_MODEL to a local CLIP model folder"


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB on 8-bit RGB; capped at 100 dB for identical images."""
    mse = float(np.mean((_arr(a) - _arr(b)) ** 2))
    return 100.0 if mse <= 1e-10 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: Image.Image, b: Image.Image) -> float:
    x, y = _arr(a), _arr(b)
    win = min(7, min(x.shape[:2]) // 2 * 2 - 1)
    return float(structural_similarity(x, y, channel_axis=2, data_range=255.0, win_size=max(win, 3)))


def mean_abs_change(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference in [0, 1]: how far an edit moved away from the reconstruction."""
    return float(np.mean(np.abs(_arr(a) - _arr(b))) / 255.0)


class ClipScorer:
    """CLIP text-image cosine similarity from a local ``CLIPModel`` folder (never downloaded)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        self.device = device

    def score(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        torch = self.torch
        with torch.no_grad():
            inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            # transformers >= 5 returns an output object whose pooler_output holds the projected embeds
            img = img if torch.is_tensor(img) else img.pooler_output
            txt = txt if torch.is_tensor(txt) else txt.pooler_output
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            return [float(v) for v in (img * txt).sum(-1)]
