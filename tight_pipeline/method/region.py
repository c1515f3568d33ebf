"""The region of an edit: where it may change the photo, and the output composited at the photo's own size.

    region = EditRegion("mask", mask)                       # a given mask (True = may change), the photo's size
    m = latent_mask(region.mask, h, w)                      # for blending while denoising (``Blend``)
    out, info = finish(photo, edit, reconstruction, region, fill="auto")

Four ways to a region, per edit (``REGION_MODES``):

- ``whole``: today's behaviour: the edit re-draws the whole photo; the output is the model's image brought to the
  photo's size.
- ``mask``: a mask the caller gives (``mask_uri`` in a manifest, ``--mask`` on ``edit``). While denoising, the
  edit's latent outside the mask is replaced at every step by the inversion's own latent at that noise level
  (Blended Latent Diffusion, Avrahami et al. 2023), so the edit is drawn knowing what stays around it.
- ``auto``: found from what the run already made: where the edit departs from the reconstruction at the working
  size (``auto_mask``), snapped to the photo itself: on a studio shot with a plain backdrop to the product or the
  backdrop, whichever the change covers better; otherwise refined at the photo's size with an edge-aware (guided)
  filter that uses the photo as its guide. Measured against the field's model-only alternatives on the demo model (docs/region.md): DiffEdit's
  noise-prediction difference and the mid-sampling latent difference both put background edits on the product.
- ``studio`` (the presets' default): ``auto`` on a studio shot (``studio_product`` finds a plain backdrop), ``whole``
  on any other photo, where automatic regions are not yet good enough (docs/region.md); the row's ``region_source``
  says which it was (``auto`` or ``whole``).

Then the composite (``composite``), at the photo's own resolution: ``alpha`` is 0 outside the region and rises
to 1 over a feather band of ``band_px`` *inside* it, so every pixel outside the region is the photo's own pixel,
byte for byte (alpha, when the photo has one, is the photo's everywhere). Inside, one of two fills:

- ``edit``: the edit brought to the photo's size (Lanczos);
- ``detail``: the photo plus the brought-up difference ``edit - reconstruction``: the photo's own fine detail
  (labels, texture) stays under a change of colour or shade.

- ``recolour``: a recolour of the product's body. The body's colour change is
  fitted from reconstruction to edit (an affine colour map over the body's pixels) and applied to the photo's own
  body colour; pixels that are not the body's colour (a near-white label, black print, another hue) keep their own
  pixels, and the body keeps its shading and texture (``_recolour``). A region with no body colour (a white
  product) falls back to ``detail``, and the row says so.

``fill="auto"`` takes ``edit`` when the edit drew new structure inside the region (a background swap, a pattern:
the correlation of the edit's and the reconstruction's luminance gradients there is under
``DETAIL_MIN_CORRELATION``), where the photo's detail would ghost through; when it kept the structure (a colour,
shade or material change), ``recolour`` on a studio shot's product (an automatic region snapped to it) and
``detail`` on any other region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

REGION_MODES = ("whole", "auto", "mask", "studio")
SOURCES = {"mask": "given", "auto": "auto", "whole": "whole", "studio": "studio"}  # the rows' ``region_source``
FILLS = ("auto", "edit", "detail", "recolour")
# ``recolour``: a pixel of the region belongs to the product's body when its chroma (the pixel less its grey part,
# ``rgb - min(rgb)``) points within ``BODY_MAX_ANGLE`` (radians) of the body colour's and its length is
# ``BODY_CHROMA_RANGE`` of the body's (shading and a highlight scale it; a near-white label, black print or another
# hue falls outside); the body's own chroma must be at least ``BODY_MIN_CHROMA`` levels (a white or grey product has
# no colour to recolour: ``detail`` is used instead).
BODY_MAX_ANGLE = 0.35
BODY_CHROMA_RANGE = (0.3, 2.0)
BODY_MIN_CHROMA = 30.0
# ``recolour``: the photo's body colour around a pixel is taken over a Gaussian of this share of the shorter side.
RECOLOUR_FIELD_SIGMA = 0.01
# ``fill="auto"``: gradient correlation of edit and reconstruction inside the region above which the photo's own
# detail is kept under the change (docs/region.md: colour edits 0.8-0.95, background and pattern edits below 0.4).
DETAIL_MIN_CORRELATION = 0.6
# ``auto_mask``: pixels whose change is under this (0-255 scale, after smoothing) never count as edited, so an
# edit that changed nothing gives an empty region instead of the noise's Otsu split.
AUTO_MIN_CHANGE = 6.0
# ``studio_product``: a photo has a plain backdrop when this share of its border pixels lies within
# ``BACKDROP_TOLERANCE`` (RGB distance) of its row's backdrop colour; a pixel farther than ``PRODUCT_DISTANCE`` from
# it is the product (its contact shadow, ~28 % darker on the demo shots, counts as product: it moves with it).
BACKDROP_BORDER_SHARE = 0.9
BACKDROP_TOLERANCE = 10.0
PRODUCT_DISTANCE = 24.0
# ``studio_parts``: a contact shadow's pixel is its row's backdrop colour darkened: within this angle (radians) of it,
# at this share of its brightness (the demo's shadows darken by up to 28 %).
SHADOW_MAX_ANGLE = 0.06
SHADOW_RANGE = (0.5, 0.985)


class RegionError(ValueError):
    """A region that cannot be used as given (the message says why)."""


@dataclass(frozen=True)
class EditRegion:
    """Where one edit may change its photo: ``mode`` in ``REGION_MODES``; ``mask`` (bool, the photo's upright
    (height, width), True = may change) for ``mask``."""

    mode: str = "whole"
    mask: np.ndarray | None = None

    def __post_init__(self):
        if self.mode not in REGION_MODES:
            raise RegionError(f"region {self.mode!r} is not one of {', '.join(REGION_MODES)}")
        if self.mode == "mask" and self.mask is None:
            raise RegionError("region 'mask' needs a mask (mask_uri in the manifest, --mask on edit)")

    @property
    def source(self) -> str:
        """What the rows call it: ``given``, ``auto`` or ``whole`` (``studio``: ``finish`` says which it became)."""
        return SOURCES[self.mode]


def band_px(width: int, height: int) -> int:
    """The feather band: max(4 px, 1 % of the shorter side)."""
    return max(4, int(round(0.01 * min(width, height))))


def latent_mask(mask: np.ndarray | None, height: int, width: int) -> torch.Tensor:
    """The region at latent size (1, 1, h, w), float: the share of each latent cell the mask covers (area mean);
    all ones without a mask."""
    if mask is None:
        return torch.ones((1, 1, height, width))
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(small, np.float32) / 255.0)[None, None]


@dataclass
class Blend:
    """Blended latent denoising of the edit rows: after every step, ``z ← m z + (1 - m) level``, with ``m`` the
    rows' latent masks and ``level`` the inversion's own latent at the noise level the step reached.

    ``masks``: (rows, 1, h, w) float on the device, 1 = may change (rows without a region: all ones).
    ``rows``: which item each edit row belongs to (indexes the trajectory's rows).
    ``levels``: the inversion's latents by level key (a timestep for SD/SDXL, a level index for FLUX) and the clean
    latent under ``clean``; ``key_after(i)`` names the level denoising step ``i`` lands on."""

    masks: torch.Tensor
    rows: list[int]
    levels: dict
    clean: torch.Tensor
    key_after: object = None
    start: int = 0  # the first step that blends (the steps before it draw the edit freely)

    def apply(self, z: torch.Tensor, step: int) -> torch.Tensor:
        if step < self.start:
            return z
        key = self.key_after(step)
        kept = self.levels.get(key, self.clean)[self.rows]
        m = self.masks.to(z)
        return m * z + (1 - m) * kept.to(z)


def _lanczos_u8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, 3) → uint8 (H, W, 3) at ``size`` (w, h): Pillow's Lanczos, which rounds to bytes itself."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _luma(image: np.ndarray) -> np.ndarray:
    return image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float = 1e-3) -> np.ndarray:
    """He et al.'s guided filter (grey guide in 0..1): ``source`` smoothed so that its edges follow ``guide``'s."""
    size = 2 * radius + 1

    def box(x):
        return ndimage.uniform_filter(x, size, mode="reflect")

    mean_i, mean_p = box(guide), box(source)
    cov = box(guide * source) - mean_i * mean_p
    var = box(guide * guide) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def studio_parts(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A studio shot's product (with its contact shadow) and that shadow — bool (H, W) each — or ``None`` when the
    photo has no plain backdrop. The shadow: product pixels outside the object's filled silhouette whose colour is
    their row's backdrop colour darkened (``SHADOW_MAX_ANGLE``, ``SHADOW_RANGE``); a backdrop swap repaints it with
    the backdrop, a recolour leaves it."""
    found = _studio(photo)
    if found is None:
        return None
    product, rgb, backdrop = found
    norm = np.linalg.norm(rgb, axis=-1) * np.linalg.norm(backdrop, axis=-1)[:, None]
    cos = (rgb * backdrop[:, None, :]).sum(-1) / np.maximum(norm, 1e-9)
    ratio = rgb.sum(-1) / np.maximum(backdrop.sum(-1), 1e-9)[:, None]
    darkened = (cos >= np.cos(SHADOW_MAX_ANGLE)) & (ratio >= SHADOW_RANGE[0]) & (ratio <= SHADOW_RANGE[1])
    obj = ndimage.binary_fill_holes(ndimage.binary_closing(product & ~darkened, iterations=2)) & product
    return product, product & ~obj


def studio_product(photo: np.ndarray) -> np.ndarray | None:
    """The product of a studio shot — bool (H, W) — or ``None`` when the photo has no plain backdrop.

    The backdrop's colour is taken per row from the photo's left and right edges (a studio sweep darkens towards
    the top), smoothed over rows; the backdrop is plain when ``BACKDROP_BORDER_SHARE`` of the border pixels (top row
    and both side columns) lie within ``BACKDROP_TOLERANCE`` of it. The product: pixels farther than
    ``PRODUCT_DISTANCE`` from their row's backdrop, closed, holes filled, specks under 0.2 % of the frame dropped."""
    found = _studio(photo)
    return None if found is None else found[0]


def _studio(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``studio_product``'s mask, the photo's RGB (float) and its backdrop colour per row (H, 3)."""
    rgb = photo[..., :3].astype(np.float64)
    height, width = rgb.shape[:2]
    k = max(1, width // 32)
    edges = np.concatenate([rgb[:, :k], rgb[:, -k:]], axis=1)  # (H, 2k, 3)
    backdrop = ndimage.median_filter(np.median(edges, axis=1), size=(max(3, height // 16) | 1, 1))  # (H, 3)
    distance = np.linalg.norm(rgb - backdrop[:, None, :], axis=-1)
    border = np.concatenate([distance[0], distance[:, :k].ravel(), distance[:, -k:].ravel()])
    if (border <= BACKDROP_TOLERANCE).mean() < BACKDROP_BORDER_SHARE:
        return None
    product = ndimage.binary_closing(distance > PRODUCT_DISTANCE, iterations=2)
    product = ndimage.binary_fill_holes(product)
    labels, n = ndimage.label(product)
    if n == 0:
        return None
    sizes = ndimage.sum(product, labels, range(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.002 * height * width))
    return (keep, rgb, backdrop) if keep.any() and not keep.all() else None


_UNSET = object()


def auto_mask(edit: np.ndarray, reconstruction: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """``auto_region``'s mask."""
    return auto_region(edit, reconstruction, photo)[0]


def auto_region(edit: np.ndarray, reconstruction: np.ndarray, photo: np.ndarray, product=_UNSET
                ) -> tuple[np.ndarray, str | None]:
    """Where the edit changed the picture: |edit - reconstruction| at the working size (smoothed, Otsu's
    threshold), brought to the photo's size, then snapped to the photo itself:

    - a studio shot (``studio_product`` finds a plain backdrop): the region is the backdrop or the product,
      whichever the change overlaps better (IoU) — a background edit that also repainted the product keeps the
      product (the backdrop's region takes the product's contact shadow with it, ``studio_parts``), a colour edit
      keeps the backdrop, both byte for byte; the product's region is then cut to where the
      edit changed it (its shadow and any untouched label stay the photo's) unless that leaves under half of it.
      An edit meant to change both takes ``region: whole``;
    - any other photo: the change refined on the photo's own edges (guided filter), holes filled.

    ``edit``, ``reconstruction``: uint8 (h, w, 3) at the working size; ``photo``: uint8 (H, W, 3+); ``product``:
    ``studio_parts(photo)`` when the caller has it. Returns the mask (bool (H, W)) and what it was snapped to:
    ``product``, ``backdrop`` or ``None`` (not a studio shot)."""
    from skimage.filters import threshold_otsu

    height, width = photo.shape[:2]
    change = np.abs(edit.astype(np.float64) - reconstruction.astype(np.float64)).mean(-1)
    change = ndimage.gaussian_filter(change, 1.0)
    if change.max() < AUTO_MIN_CHANGE:
        return np.zeros((height, width), bool), None
    small = change > max(threshold_otsu(change), AUTO_MIN_CHANGE)
    up = np.asarray(Image.fromarray(small.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BILINEAR),
                    np.float64) / 255.0
    radius = max(2, int(round(max(height / edit.shape[0], width / edit.shape[1]) * 2)))
    refined = guided_filter(_luma(photo) / 255.0, up, radius) > 0.5
    refined = ndimage.binary_fill_holes(ndimage.binary_closing(refined, iterations=2))
    parts = studio_parts(photo) if product is _UNSET else product
    if parts is None:
        return refined, None
    product, shadow = parts
    changed = up > 0.5

    def iou(region):
        return (changed & region).sum() / max(1, (changed | region).sum())

    if iou(product) < iou(~product):
        return ~product | shadow, "backdrop"  # the product stays the photo's; its shadow goes with the backdrop
    # the product, less what the edit left as it was (its contact shadow, a label the recolour did not touch)
    inside = product & refined
    return (inside if inside.sum() >= 0.5 * product.sum() else product), "product"


def feather(mask: np.ndarray, band: int) -> np.ndarray:
    """Alpha of the composite: 0 outside ``mask``, rising linearly to 1 over ``band`` px inside it."""
    if not mask.any():
        return np.zeros(mask.shape)
    inside = ndimage.distance_transform_edt(mask)
    return np.clip(inside / band, 0.0, 1.0) * mask


def structure_correlation(edit: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray) -> float:
    """Correlation of the luminance gradients of ``edit`` and ``reconstruction`` inside ``mask`` (working size):
    near 1 when the edit kept the structure (a recolour), low when it drew new structure."""
    if not mask.any():
        return 1.0
    ge = np.stack(np.gradient(_luma(edit)), -1)[mask].ravel()
    gr = np.stack(np.gradient(_luma(reconstruction)), -1)[mask].ravel()
    ge, gr = ge - ge.mean(), gr - gr.mean()
    denom = float(np.sqrt((ge * ge).sum() * (gr * gr).sum()))
    return float((ge * gr).sum() / denom) if denom > 0 else 1.0


def body_weights(rgb: np.ndarray, body: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """How much each pixel of ``rgb`` ((N, 3) float) is the product's body colour (0-1), and that colour's chroma
    (``None``: the body has too little colour, all weights 0). ``body``: the body colour; default the median chroma
    of the saturated pixels."""
    chroma = rgb - rgb.min(-1, keepdims=True)
    length = np.linalg.norm(chroma, axis=-1)
    if body is None:
        strong = chroma[length >= BODY_MIN_CHROMA]
        if len(strong) < max(16, 0.2 * len(rgb)):
            return np.zeros(len(rgb)), None
        body = np.median(strong, axis=0)
    body_len = float(np.linalg.norm(body))
    if body_len < BODY_MIN_CHROMA:
        return np.zeros(len(rgb)), None
    cos = (chroma @ body) / np.maximum(length * body_len, 1e-9)
    angle = np.arccos(np.clip(cos, -1, 1))
    ratio = length / body_len
    lo, hi = BODY_CHROMA_RANGE
    # soft edges: 1 well inside the tolerances, 0 beyond them (anti-aliased print edges get a share)
    w_angle = np.clip((BODY_MAX_ANGLE - angle) / (0.5 * BODY_MAX_ANGLE), 0, 1)
    w_ratio = np.clip((ratio - 0.5 * lo) / (0.5 * lo), 0, 1) * np.clip((hi - ratio) / (0.25 * hi), 0, 1)
    return w_angle * w_ratio, body


def fit_colour_map(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """The affine colour map (4, 3) that takes ``source`` pixels to ``target`` ((N, 3) float) by weighted least
    squares (``[r, g, b, 1] @ M``), or ``None`` with too few weighted pixels."""
    if weights.sum() < 8:
        return None
    x = np.concatenate([source, np.ones((len(source), 1))], -1) * np.sqrt(weights)[:, None]
    y = target * np.sqrt(weights)[:, None]
    ridge = 1e-3 * np.eye(4) * max(1.0, float(weights.sum()))
    return np.linalg.solve(x.T @ x + ridge, x.T @ y)


def recolour_inner(rgb_region: np.ndarray, photo_region_body: tuple[np.ndarray, np.ndarray], colour_map: np.ndarray
                   ) -> np.ndarray:
    """The ``recolour`` fill on the region's pixels: ``photo + w * (F(body_colour) - body_colour)``, where ``w`` is
    the pixel's body weight and ``body_colour`` the photo's own body colour around it (``photo_region_body``: the
    weights and that smooth field): the body takes the fitted new colour with its shading, its texture added back
    unchanged; marks that are not the body's colour keep their own pixels."""
    weights, field = photo_region_body
    mapped = np.concatenate([field, np.ones((len(field), 1))], -1) @ colour_map
    return rgb_region + weights[:, None] * (mapped - field)


def _recolour(photo_rgb: np.ndarray, edit: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray,
              inside: np.ndarray) -> np.ndarray | None:
    """The recoloured pixels of ``inside`` (float (N, 3)) or ``None`` when the region has no body colour or no map
    can be fitted (then ``detail`` is used)."""
    height, width = photo_rgb.shape[:2]
    w, body = body_weights(photo_rgb[mask].astype(np.float64))
    if body is None:
        return None
    # the map: reconstruction -> edit on the body pixels at the working size
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (edit.shape[1], edit.shape[0]), Image.Resampling.BOX)) >= 128
    rec, ed = reconstruction[small_mask].astype(np.float64), edit[small_mask].astype(np.float64)
    colour_map = fit_colour_map(rec, ed, body_weights(rec, body)[0])
    if colour_map is None:
        return None
    # the photo's body colour around each pixel, from body pixels only (normalised convolution): shading, no marks.
    # Only over the region's box and the filter's reach around it (the same values: weights are 0 outside the mask).
    sigma = max(1.0, RECOLOUR_FIELD_SIGMA * min(height, width))
    reach = int(4.0 * sigma + 0.5) + 1  # scipy's default truncate (4 sigma)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (slice(max(0, rows[0] - reach), rows[-1] + 1 + reach), slice(max(0, cols[0] - reach), cols[-1] + 1 + reach))
    rgb, here = photo_rgb[box].astype(np.float64), inside[box]
    weights = np.zeros(here.shape)
    weights[mask[box]] = w  # the mask lies in the box: the same pixels in the same order
    norm = ndimage.gaussian_filter(weights, sigma)
    field = np.stack([ndimage.gaussian_filter(rgb[..., c] * weights, sigma) for c in range(3)], -1)
    field = field[here] / np.maximum(norm[here], 1e-6)[:, None]
    return recolour_inner(rgb[here], (weights[here], field), colour_map)


def composite(photo: np.ndarray, edit: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray, fill: str
              ) -> np.ndarray:
    """The output at the photo's size: the photo's own pixels outside ``mask`` (byte for byte), the fill inside
    with a feather band of ``band_px`` inside the region. ``photo``: uint8 (H, W, 3 or 4); alpha is kept."""
    return composite_fill(photo, edit, reconstruction, mask, fill)[0]


def composite_fill(photo: np.ndarray, edit: np.ndarray, reconstruction: np.ndarray, mask: np.ndarray, fill: str
                   ) -> tuple[np.ndarray, str]:
    """``composite`` and the fill it used (``recolour`` falls back to ``detail`` where the region has no body
    colour to recolour)."""
    height, width = photo.shape[:2]
    alpha = feather(mask, band_px(width, height))
    inside = alpha > 0
    out = photo[..., :3].copy()
    # Arithmetic only where the region reaches (often a fraction of a catalog photo), in float64 as before.
    rgb = out[inside].astype(np.float64)
    inner = _recolour(photo[..., :3], edit, reconstruction, mask, inside) if fill == "recolour" else None
    used = fill if inner is not None or fill == "edit" else "detail"
    if inner is None:  # edit, or detail (also recolour's fallback): the edit brought up to the photo's size
        big_edit = _lanczos_u8(edit, (width, height))[inside].astype(np.float64)
        inner = big_edit if fill == "edit" else (
            rgb + big_edit - _lanczos_u8(reconstruction, (width, height))[inside].astype(np.float64))
    a = alpha[inside][:, None]
    out[inside] = np.clip(np.round(rgb + a * (inner - rgb)), 0, 255).astype(np.uint8)
    return (np.concatenate([out, photo[..., 3:]], -1) if photo.shape[-1] == 4 else out), used


def upsize(image: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """A working-size image at the photo's size (Lanczos), with the photo's alpha when it has one."""
    out = _lanczos_u8(image, (photo.shape[1], photo.shape[0]))
    return np.concatenate([out, photo[..., 3:]], -1) if photo.shape[-1] == 4 else out


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """PSNR in dB of the RGB of ``a`` vs ``b`` over the pixels ``where`` (all: None); 100 for identical pixels,
    None for no pixels."""
    if where is not None and not where.all():
        if not where.any():
            return None
        a, b = a[where], b[where]  # (N, C): only the pixels counted
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        # Exact in integers: no float64 copies of a 12-MP photo (the differences square to at most 255**2).
        total, count = 0, 0
        for start in range(0, len(a), 256):  # row blocks: bounded temporaries
            d = a[start:start + 256, ..., :3].astype(np.int16) - b[start:start + 256, ..., :3].astype(np.int16)
            total += int(np.square(d, dtype=np.int32).sum(dtype=np.int64))
            count += d.size
        mse = total / count
    else:
        mse = float(np.mean((a[..., :3].astype(np.float64) - b[..., :3].astype(np.float64)) ** 2))
    return 100.0 if mse <= 1e-10 else float(10 * np.log10(255.0**2 / mse))


def finish(photo: np.ndarray, edit: np.ndarray, reconstruction: np.ndarray, region: EditRegion, fill: str = "auto",
           product=_UNSET) -> tuple[np.ndarray, dict, np.ndarray]:
    """One edit's output at the photo's size and its region scores.

    ``photo``: the photo's own upright pixels, uint8 (H, W, 3|4); ``edit``, ``reconstruction``: uint8 (h, w, 3) at
    the working size. Returns the output (the photo's shape) and the row fields ``region_source``,
    ``region_fraction``, ``region_fill``, ``psnr_outside_region`` and ``psnr_inside_region`` (vs the photo, at its
    size). ``product``: ``studio_parts(photo)`` when the caller has it (one per photo, not one per edit)."""
    if fill not in FILLS:
        raise RegionError(f"region fill {fill!r} is not one of {', '.join(FILLS)}")
    height, width = photo.shape[:2]
    mode = region.mode
    if mode in ("auto", "studio") and product is _UNSET:
        product = studio_parts(photo)
    if mode == "studio":
        mode = "auto" if product is not None else "whole"
    source = SOURCES[mode]
    if mode == "whole":
        out = upsize(edit, photo)
        mask = np.ones((height, width), bool)
        used = "edit"
    else:
        mask, part = (region.mask, None) if mode == "mask" else auto_region(edit, reconstruction, photo, product)
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (edit.shape[1], edit.shape[0]), Image.Resampling.BOX)) >= 128
        used = fill
        if fill == "auto":
            kept = structure_correlation(edit, reconstruction, small) >= DETAIL_MIN_CORRELATION
            used = "edit" if not kept else "recolour" if part == "product" else "detail"
        out, used = composite_fill(photo, edit, reconstruction, mask, used)
    return out, {
        "region_source": source,
        "region_fraction": float(mask.mean()),
        "region_fill": used,
        "psnr_outside_region": psnr(out, photo, ~mask),
        "psnr_inside_region": psnr(out, photo, mask),
    }, mask
