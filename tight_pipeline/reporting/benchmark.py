"""Edit-benchmark metrics as PIE-Bench's evaluation code computes them, and the table of a benchmark run.

    scorers = Scorers.load(clip="path/to/clip", dino="facebook/dino-vitb8")  # each from local weights or missing
    row = score_case(source, edited, mask, target_prompt, scorers)          # one dict of metrics per edit
    table = summarize(rows)                                                  # one row per peer: the field's columns

The formulas follow the benchmark authors' ``evaluation/matrics_calculator.py`` (cure-lab/PnPInversion) with
torchmetrics' definitions, checked against torchmetrics and hand-made cases in ``tests/test_benchmark.py``:
- images as float32 in [0, 1]; a region is kept by **multiplying** both images by its 0/1 mask (the pixels outside
  it count as equal zeros, they are not left out): ``psnr`` = 10·log10(1 / MSE), ``mse`` = mean squared error over
  every value, ``ssim`` = torchmetrics' SSIM (11×11 Gaussian window, σ 1.5, reflect padding, mean over the image);
  the *unedited* part is ``1 - mask`` (``nan`` when the mask covers everything). Identical images give PSNR ``inf``
  in the reference; it is capped at 100 dB here so that means stay numbers (a byte-exact background says 100).
- ``structure_distance``: DINO ViT-B/8 (local weights in transformers' layout, e.g. ``facebook/dino-vitb8`` in the HF
  cache): both images as 0..255 floats (the reference does not divide by 255), resized to 224 on the short side,
  ImageNet-normalised; the keys of the last block, concatenated over heads; their token-by-token cosine
  self-similarity; the mean squared difference of the two matrices.
- ``clip_whole`` / ``clip_edited``: torchmetrics' CLIPScore, max(100·cos(image, text), 0), of the edited image and of
  the edited image multiplied by the mask, against the edit prompt (the reference uses CLIP ViT-L/14).
- ``lpips``: torchmetrics' LPIPS (SqueezeNet) on the unedited part, images in [-1, 1]; needs torchvision, torchmetrics
  and the SqueezeNet weights in the torch hub cache.
A metric whose weights or packages are missing is ``None`` in every row and named with its reason in
``Scorers.missing`` (the table and the MLflow run say it); it is never downloaded or estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tight_pipeline.method.metrics import ClipScorer

PSNR_CAP = 100.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The table's columns, in the order and scale the field prints them (PIE-Bench tables: structure ×10³, LPIPS ×10³,
# MSE ×10⁴, SSIM ×10²), with the direction that is better.
COLUMNS = (("structure_distance", 1e3, "lower"), ("psnr_unedited", 1.0, "higher"), ("lpips_unedited", 1e3, "lower"),
           ("mse_unedited", 1e4, "lower"), ("ssim_unedited", 1e2, "higher"), ("clip_whole", 1.0, "higher"),
           ("clip_edited", 1.0, "higher"), ("psnr_whole", 1.0, "higher"), ("ssim_whole", 1e2, "higher"))


def _unit(image) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(image, np.float32)[..., :3] / 255.0).permute(2, 0, 1)[None]


def _masked(a, b, mask) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _unit(a), _unit(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {tuple(x.shape[-2:])} vs {tuple(y.shape[-2:])}")
    if mask is not None:
        m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        x, y = x * m, y * m
    return x, y


def pie_mse(a, b, mask=None) -> float:
    x, y = _masked(a, b, mask)
    return float(torch.mean((x.double() - y.double()) ** 2))


def pie_psnr(a, b, mask=None) -> float:
    mse = pie_mse(a, b, mask)
    return PSNR_CAP if mse <= 0 else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    d = torch.arange((1 - size) / 2, (1 + size) / 2, 1.0, dtype=torch.float64)
    g = torch.exp(-((d / sigma) ** 2) / 2)
    return g / g.sum()


def pie_ssim(a, b, mask=None) -> float:
    """torchmetrics' ``structural_similarity_index_measure(data_range=1.0)`` of the (masked) images, with the
    Gaussian window applied as two 1-D passes (the same sums, ~10x faster on a CPU; equal to 1e-6, tested)."""
    x, y = _masked(a, b, mask)
    g = _gaussian().float()
    pad = 5
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    stack = torch.cat([x, y, x * x, y * y, x * y])
    stack = F.conv2d(stack, g.view(1, 1, 1, 11).expand(3, 1, 1, 11), groups=3)
    mx, my, xx, yy, xy = F.conv2d(stack, g.view(1, 1, 11, 1).expand(3, 1, 11, 1), groups=3).double().split(1)
    vx = torch.clamp(xx - mx**2, min=0.0)
    vy = torch.clamp(yy - my**2, min=0.0)
    vxy = xy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


class DinoStructure:
    """PIE-Bench's structure distance from a local DINO ViT in transformers' layout (never downloaded)."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True).to(device).eval()
        keys = [m for n, m in self.model.named_modules() if n.endswith(("k_proj", "attention.key"))]
        if not keys:
            raise ValueError(f"{path}: no attention key projections found: not a ViT in transformers' layout")
        self.key = keys[-1]  # the last block's (the reference's layer 11 of ViT-B/8's 12)
        self.device = device

    @torch.no_grad()
    def self_similarity(self, image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image, np.float32)[..., :3]).permute(2, 0, 1)[None].to(self.device)
        h, w = x.shape[-2:]
        scale = 224 / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if max(size) > 480:  # torchvision Resize(224, max_size=480)
            f = 480 / max(size)
            size = (max(1, round(size[0] * f)), max(1, round(size[1] * f)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
        x = (x - mean) / std  # on 0..255 values, as the reference normalises them
        found = {}
        handle = self.key.register_forward_hook(lambda m, i, o: found.setdefault("k", o))
        try:
            self.model(pixel_values=x, interpolate_pos_encoding=True)
        finally:
            handle.remove()
        return keys_self_similarity(found["k"][0])

    def distance(self, a, b) -> float:
        return float(F.mse_loss(self.self_similarity(a), self.self_similarity(b)))


def keys_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(tokens, dim) keys -> (tokens, tokens) cosine similarity (the reference's ``attn_cosine_sim``)."""
    norm = keys.norm(dim=-1, keepdim=True)
    return (keys @ keys.T) / torch.clamp(norm @ norm.T, min=eps)


class Lpips:
    """torchmetrics' LPIPS (SqueezeNet, as the reference); needs torchvision and the cached backbone weights."""

    def __init__(self, device: str = "cpu"):
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze").to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, a, b, mask=None) -> float:
        x, y = _masked(a, b, mask)
        return float(self.metric(x.to(self.device) * 2 - 1, y.to(self.device) * 2 - 1))


@dataclass
class Scorers:
    clip: ClipScorer | None = None
    dino: DinoStructure | None = None
    lpips: Lpips | None = None
    missing: dict[str, str] = field(default_factory=dict)  # metric -> why it is not computed

    @classmethod
    def load(cls, clip: str | None = None, dino: str | None = None, lpips: bool = True,
             device: str = "cpu") -> "Scorers":
        out = cls()
        if clip:
            try:
                out.clip = ClipScorer(clip, device=device)
            except Exception as exc:  # noqa: BLE001 - a metric without weights is reported missing, by name
                out.missing["clip"] = f"CLIP weights at {clip} could not be loaded: {_first_line(exc)}"
        else:
            out.missing["clip"] = "no CLIP weights given (--clip FOLDER; the reference uses openai/clip-vit-large-patch14)"
        if dino:
            try:
                out.dino = DinoStructure(dino, device=device)
            except Exception as exc:  # noqa: BLE001
                out.missing["structure_distance"] = f"DINO weights at {dino} could not be loaded: {_first_line(exc)}"
        else:
            out.missing["structure_distance"] = ("no DINO weights given (--dino FOLDER or HF id in the local cache, "
                                                 "e.g. facebook/dino-vitb8)")
        if lpips:
            try:
                out.lpips = Lpips(device=device)
            except Exception as exc:  # noqa: BLE001
                out.missing["lpips"] = ("LPIPS needs torchvision, torchmetrics and SqueezeNet's weights in the torch hub "
                                        f"cache: {_first_line(exc)}")
        else:
            out.missing["lpips"] = "switched off (--no-lpips)"
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def score_case(source: np.ndarray, edited: np.ndarray, mask: np.ndarray, target_prompt: str,
               scorers: Scorers) -> dict[str, float | None]:
    """PIE-Bench's metrics of one edited image (uint8 (H, W, 3), the source's size) against its source, ``mask`` =
    the edited region (bool (H, W))."""
    keep = ~mask
    row: dict[str, float | None] = {
        "psnr_unedited": None if not keep.any() else pie_psnr(source, edited, keep),
        "mse_unedited": None if not keep.any() else pie_mse(source, edited, keep),
        "ssim_unedited": None if not keep.any() else pie_ssim(source, edited, keep),
        "psnr_whole": pie_psnr(source, edited),
        "ssim_whole": pie_ssim(source, edited),
        "structure_distance": scorers.dino.distance(source, edited) if scorers.dino else None,
        "lpips_unedited": scorers.lpips(source, edited, keep) if scorers.lpips and keep.any() else None,
        "clip_whole": None, "clip_edited": None,
    }
    if scorers.clip:
        from PIL import Image

        cut = (np.asarray(edited, np.float32)[..., :3] * mask[..., None]).astype(np.uint8)
        cos = scorers.clip.score([Image.fromarray(np.asarray(edited)[..., :3]), Image.fromarray(cut)],
                                 [target_prompt, target_prompt])
        row["clip_whole"], row["clip_edited"] = (max(100.0 * c, 0.0) for c in cos)
    return row


def summarize(rows: pd.DataFrame, missing: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per peer (in first-seen order): cases, errors, seconds per item and the mean of every metric in the
    field's scale (``COLUMNS``); a missing metric's column says ``missing``."""
    missing = missing or {}
    out = []
    for peer, group in rows.groupby("peer", sort=False):
        ok = group[group["status"] == "ok"]
        rec = {"peer": peer, "cases": int(len(group)), "errors": int((group["status"] != "ok").sum()),
               "s_per_item": round(float(ok["seconds"].mean()), 3) if len(ok) else None}
        for name, scale, _ in COLUMNS:
            metric = "structure_distance" if name == "structure_distance" else name.split("_")[0]
            if metric in missing or name in missing:
                rec[name] = "missing"
                continue
            values = pd.to_numeric(ok[name], errors="coerce").dropna() if name in ok else pd.Series(dtype=float)
            rec[name] = round(float(values.mean()) * scale, 3) if len(values) else None
        out.append(rec)
    return pd.DataFrame(out)


def by_type(rows: pd.DataFrame) -> pd.DataFrame:
    """Per peer and edit type: cases, PSNR of the unedited part and CLIP of the whole edit (where measured)."""
    ok = rows[rows["status"] == "ok"]
    cols = [c for c in ("psnr_unedited", "clip_whole") if c in ok and pd.to_numeric(ok[c], errors="coerce").notna().any()]
    numeric = ok.assign(**{c: pd.to_numeric(ok[c], errors="coerce") for c in cols})
    out = numeric.groupby(["peer", "edit_type"], sort=False)[cols].mean().round(2)
    out.insert(0, "cases", numeric.groupby(["peer", "edit_type"], sort=False).size())
    return out.reset_index()


def best_peer(table: pd.DataFrame, clip_margin: float = 5.0) -> tuple[str | None, str]:
    """The rule the demo's default preset is chosen by: among peers that edit without being given the mask (no
    ``+mask``), those whose CLIP score of the edit is within ``clip_margin`` points of the best; of these the one
    that keeps the most (PSNR of the unedited part), ties to the faster. ``(peer, the reason in words)``; without
    CLIP, the best PSNR of the unedited part."""
    free = table[~table["peer"].astype(str).str.contains(r"\+mask")].copy()
    free["psnr"] = pd.to_numeric(free["psnr_unedited"], errors="coerce")
    free["clip"] = pd.to_numeric(free.get("clip_whole"), errors="coerce") if "clip_whole" in free else float("nan")
    free = free.dropna(subset=["psnr"])
    if free.empty:
        return None, "no peer has a PSNR of the unedited part"
    if free["clip"].notna().any():
        top = free["clip"].max()
        free = free[free["clip"] >= top - clip_margin]
        rule = f"the most kept (PSNR of the unedited part) among peers within {clip_margin:g} CLIP points of the best edit ({top:.1f})"
    else:
        rule = "the most kept (PSNR of the unedited part); CLIP not measured"
    best = free.sort_values(["psnr", "s_per_item"], ascending=[False, True]).iloc[0]
    return str(best["peer"]), f"{rule}: {best['psnr']:.2f} dB"


def header(name: str) -> str:
    """A table column's name with its scale and direction, as the field prints it (``psnr_unedited ↑``)."""
    for col, scale, better in COLUMNS:
        if col == name:
            mark = "↑" if better == "higher" else "↓"
            return f"{name} ×10^{int(round(math.log10(scale)))} {mark}" if scale != 1.0 else f"{name} {mark}"
    return name


def markdown(table: pd.DataFrame) -> str:
    shown = table.rename(columns={c: header(c) for c in table.columns})
    try:
        return shown.to_markdown(index=False)
    except ImportError:  # tabulate is optional
        return shown.to_string(index=False)

