"""Scores computed offline: PSNR and SSIM always; CLIP text-image similarity only from local weights.

PSNR / SSIM / change take PIL images or (H, W, 3) uint8 tensors; on tensors they run where the tensors are, so
the GPU actor scores its decoded images on the device instead of on a CPU core (equal to scikit-image's SSIM to
1e-9, tested).

LPIPS needs AlexNet/VGG backbone weights and torchvision, neither of which can be obtained here; it is
reported as missing with the reason instead of being downloaded or faked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image



def as_tensor(image) -> torch.Tensor:
    """An 8-bit RGB image as an (H, W, 3) tensor: PIL images and numpy arrays go to the CPU, tensors stay put."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).copy())


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_tensor(a), as_tensor(b)
    y = y.to(x.device)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x.double(), y.double()


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB on 8-bit RGB; capped at 100 dB for identical images.

    ``a``/``b``: PIL images, uint8 arrays or (H, W, 3) tensors on any device (computed where they are, float64).
    """
    x, y = _pair(a, b)
    mse = float(torch.mean((x - y) ** 2))
    return 100.0 if mse <= 1e-10 else float(10 * np.log10(255.0**2 / mse))


def ssim(a, b) -> float:
    """Mean SSIM over RGB (Wang et al. 2004), as ``skimage.metrics.structural_similarity(channel_axis=2,
    data_range=255)`` computes it: 7x7 uniform window (smaller for tiny images), sample covariance, mean over the
    valid window positions of every channel. Runs on the images' device in float64."""
    x, y = _pair(a, b)
    win = max(3, min(7, min(x.shape[:2]) // 2 * 2 - 1))
    x, y = x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None]

    def mean(v):
        return torch.nn.functional.avg_pool2d(v, win, stride=1)

    ux, uy = mean(x), mean(y)
    cov_norm = win * win / (win * win - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def mean_abs_change(a, b) -> float:
    """Mean absolute pixel difference in [0, 1]: how far an edit moved away from the reconstruction."""
    x, y = _pair(a, b)
    return float(torch.mean(torch.abs(x - y)) / 255.0)


class ClipScorer:
    """CLIP text-image cosine similarity from a local ``CLIPModel`` folder or cached HF id (never downloaded)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        where = str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else str(path)
        try:  # a folder, or a Hugging Face id already in the local cache
            self.model = CLIPModel.from_pretrained(where, local_files_only=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(where, local_files_only=True)
        except OSError:
            raise FileNotFoundError(f"CLIP model {path} not found: give a local CLIPModel folder with its processor "
                                    "files, or the id of one in the Hugging Face cache (CLIP weights are never "
                                    "downloaded)") from None
        self.torch = torch
        self.path = str(path)
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
