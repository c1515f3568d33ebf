"""Synthetic studio product shots with captions and masks (deterministic from a seed and an index).

    shot = render_product(ProductSpec.sample(seed=0, index=17))
    shot.image, shot.mask, shot.background, shot.caption   # 64x64 RGB, bool mask, product-free plate, text

Products are drawn at 4x the output size with Pillow and box-downsampled, so edges are anti-aliased.
Every shot has shading, a highlight, a soft contact shadow, and often a small logo mark and a pattern
(stripes or dots in a darker shade of the product colour): fine detail an inversion has to keep.
The ``background`` plate is the same scene without the product (shadow included), used to segment the
product region of an edited image for the shape-preservation score.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("mug", "bottle", "box", "ball")
COLOURS = {
    "red": (208, 42, 38),
    "orange": (236, 128, 28),
    "yellow": (236, 200, 40),
    "green": (52, 160, 68),
    "teal": (26, 150, 152),
    "blue": (40, 82, 204),
    "purple": (132, 60, 182),
}
PATTERNS = ("plain", "striped", "dotted")
BACKGROUNDS = {
    "white": (241, 241, 238),
    "grey": (178, 180, 186),
    "beige": (226, 211, 186),
    "mint": (204, 232, 216),
}
SIZE = 64
HELDOUT_SEED_OFFSET = 10_000  # held-out shots: ProductSpec.sample(seed + 10_000, i), never trained on
_SS = 4  # supersampling factor


def caption(kind: str, colour: str, pattern: str, background: str) -> str:
    """'a red striped mug on a white background' (``plain`` is left out)."""
    words = ["a", colour] + ([] if pattern == "plain" else [pattern]) + [kind, "on", "a", background, "background"]
    return " ".join(words)


def vocabulary() -> list[str]:
    """Every word a caption can contain."""
    words = {"a", "on", "background", *KINDS, *COLOURS, *BACKGROUNDS}
    words |= {p for p in PATTERNS if p != "plain"}
    return sorted(words)


def target_colour(colour: str) -> str:
    """The colour an evaluation edit asks for: three steps round the palette (always a different hue)."""
    names = list(COLOURS)
    return names[(names.index(colour) + 3) % len(names)]


@dataclass(frozen=True)
class ProductSpec:
    """Everything that determines one shot; ``render_product`` is a pure function of it."""

    kind: str
    colour: str
    pattern: str
    background: str
    scale: float  # product size relative to the nominal size
    dx: float  # horizontal offset, fraction of the image width
    logo: bool
    seed: int  # for small shape jitter

    @property
    def caption(self) -> str:
        return caption(self.kind, self.colour, self.pattern, self.background)

    def with_colour(self, colour: str) -> "ProductSpec":
        return replace(self, colour=colour)

    @staticmethod
    def sample(seed: int, index: int) -> "ProductSpec":
        rng = np.random.default_rng([seed, index])
        return ProductSpec(
            kind=KINDS[rng.integers(len(KINDS))],
            colour=list(COLOURS)[rng.integers(len(COLOURS))],
            pattern=PATTERNS[rng.integers(len(PATTERNS))],
            background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
            scale=float(rng.uniform(0.85, 1.1)),
            dx=float(rng.uniform(-0.07, 0.07)),
            logo=bool(rng.random() < 0.6),
            seed=int(rng.integers(2**31)),
        )


@dataclass
class ProductShot:
    spec: ProductSpec
    image: Image.Image
    mask: np.ndarray  # bool (SIZE, SIZE): the product
    background: Image.Image  # the same scene without the product

    @property
    def caption(self) -> str:
        return self.spec.caption


def _shade(rgb, factor: float):
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)


def _silhouette(spec: ProductSpec, big: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The product's mask at supersampled size and its body box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(spec.seed)
    s = spec.scale * big
    cx = big / 2 + spec.dx * big
    base_y = big * 0.80
    m = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(m)
    if spec.kind == "mug":
        w, h = s * rng.uniform(0.36, 0.42), s * rng.uniform(0.40, 0.46)
        x0, y0 = cx - w / 2 - s * 0.05, base_y - h
        box = (x0, y0, x0 + w, base_y)
        d.rounded_rectangle(box, radius=s * 0.04, fill=255)
        # handle: a thick ring on the right
        hx, hy, hr = box[2], y0 + h * 0.48, h * 0.22
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=255)
        ir = hr * 0.52
        d.ellipse((hx - ir + hr * 0.25, hy - ir, hx + ir + hr * 0.25, hy + ir), fill=0)
        d.rectangle((box[0], y0, box[2], base_y), fill=255)
    elif spec.kind == "bottle":
        w, h = s * rng.uniform(0.24, 0.28), s * rng.uniform(0.50, 0.56)
        x0, y0 = cx - w / 2, base_y - h
        box = (x0, y0 + h * 0.32, x0 + w, base_y)
        d.rounded_rectangle(box, radius=s * 0.03, fill=255)
        d.polygon([(x0, box[1] + 2), (x0 + w, box[1] + 2), (cx + w * 0.2, y0 + h * 0.12), (cx - w * 0.2, y0 + h * 0.12)], fill=255)
        d.rectangle((cx - w * 0.2, y0 + h * 0.02, cx + w * 0.2, y0 + h * 0.14), fill=255)
        box = (x0, y0, x0 + w, base_y)
    elif spec.kind == "box":
        w, h = s * rng.uniform(0.44, 0.52), s * rng.uniform(0.34, 0.42)
        depth = s * 0.08
        x0, y0 = cx - w / 2, base_y - h
        d.rectangle((x0, y0, x0 + w, base_y), fill=255)
        d.polygon([(x0, y0), (x0 + depth, y0 - depth), (x0 + w + depth, y0 - depth), (x0 + w, y0)], fill=255)
        d.polygon([(x0 + w, y0), (x0 + w + depth, y0 - depth), (x0 + w + depth, base_y - depth), (x0 + w, base_y)], fill=255)
        box = (x0, y0, x0 + w, base_y)
    else:  # ball
        r = s * rng.uniform(0.20, 0.24)
        box = (cx - r, base_y - 2 * r, cx + r, base_y)
        d.ellipse(box, fill=255)
    return m, tuple(int(v) for v in box)


def render_product(spec: ProductSpec, size: int = SIZE) -> ProductShot:
    """Render one shot (image, mask, product-free background) at ``size`` pixels."""
    big = size * _SS
    bg_rgb = np.array(BACKGROUNDS[spec.background], np.float32)
    # studio sweep: slightly darker towards the top
    ramp = np.linspace(0.93, 1.0, big, dtype=np.float32)[:, None, None]
    plate = np.broadcast_to(bg_rgb * ramp, (big, big, 3)).copy()

    mask_img, box = _silhouette(spec, big)
    x0, y0, x1, y1 = box
    # soft contact shadow under the product
    shadow = Image.new("L", (big, big), 0)
    ImageDraw.Draw(shadow).ellipse((x0 - big * 0.02, y1 - big * 0.025, x1 + big * 0.06, y1 + big * 0.03), fill=255)
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(big * 0.02)), np.float32)[..., None] / 255.0
    plate = plate * (1 - 0.28 * shadow)

    base = np.array(COLOURS[spec.colour], np.float32)
    dark = np.array(_shade(COLOURS[spec.colour], 0.55), np.float32)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    product = np.broadcast_to(base, (big, big, 3)).copy()
    if spec.pattern == "striped":
        period = big * 0.125  # 8 px: two latent pixels per period (finer stripes do not survive an f=4 VAE)
        stripes = ((yy - y0) % period) < period * 0.42
        product[stripes] = dark
    elif spec.pattern == "dotted":
        period = big * 0.16
        u, v = (xx - x0) % period - period / 2, (yy - y0) % period - period / 2
        product[(u**2 + v**2) < (period * 0.24) ** 2] = dark
    if spec.logo:
        lx, ly, lr = (x0 + x1) / 2, y0 + (y1 - y0) * 0.55, big * 0.035
        emblem = ((xx - lx) ** 2 + (yy - ly) ** 2 < lr**2) & ~((np.abs(xx - lx) < lr * 0.35) & (yy > ly - lr * 0.6))
        product[emblem] = (246, 246, 240)
    # cylindrical shading across the body and a vertical highlight
    width = max(x1 - x0, 1)
    u = np.clip((xx - x0) / width, 0, 1)
    shading = 0.72 + 0.38 * np.sin(np.pi * np.clip(u * 0.9 + 0.05, 0, 1))
    product = product * shading[..., None]
    highlight = np.exp(-(((u - 0.3) / 0.05) ** 2))[..., None]
    product = product + (255 - product) * 0.45 * highlight

    alpha = np.asarray(mask_img, np.float32)[..., None] / 255.0
    scene = plate * (1 - alpha) + product * alpha
    image = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    background = Image.fromarray(np.clip(plate, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    mask = np.asarray(mask_img.resize((size, size), Image.Resampling.BOX)) >= 128
    return ProductShot(spec, image, mask, background)


# -- analysis of (edited) shots ---------------------------------------------------------------------------
def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


PALETTE_HUES = {name: _hue(rgb) for name, rgb in COLOURS.items()}


def dominant_colour(image: Image.Image, mask: np.ndarray) -> str | None:
    """The palette colour most pixels inside ``mask`` are nearest to by hue (saturated pixels only)."""
    hsv = np.asarray(image.convert("HSV"), np.float32) / 255.0
    pick = mask & (hsv[..., 1] > 0.35) & (hsv[..., 2] > 0.25)
    if pick.sum() < 5:
        return None
    hues = hsv[..., 0][pick]
    names = list(PALETTE_HUES)
    ref = np.array([PALETTE_HUES[n] for n in names])
    dist = np.abs(hues[:, None] - ref[None, :])
    dist = np.minimum(dist, 1 - dist)
    votes = np.bincount(dist.argmin(1), minlength=len(names))
    return names[int(votes.argmax())]


def product_region(image: Image.Image, background: Image.Image, threshold: float = 48.0) -> np.ndarray:
    """Pixels that differ from the product-free plate by more than ``threshold`` (RGB distance, 0-255)."""
    a = np.asarray(image.convert("RGB"), np.float32)
    b = np.asarray(background.convert("RGB"), np.float32)
    return np.linalg.norm(a - b, axis=-1) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
