"""What goes into an engine and what comes out: ``ItemRequest`` → ``ItemResult`` (with typed ``Timings``), the
errors an item can end with, and the last step every engine shares — outputs at the photo's own size."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from tight_pipeline.method import region
from tight_pipeline.method.presets import Preset


class InputError(ValueError):
    """The item cannot be processed as given (the message says why); other items are unaffected."""


class BatchError(RuntimeError):
    """A batch of several items failed as a whole (``cause``); re-run its items one at a time to find which."""

    def __init__(self, cause: BaseException, size: int):
        super().__init__(f"a batch of {size} items failed: {type(cause).__name__}: {cause}")
        self.cause = cause
        self.size = size


@dataclass(frozen=True)
class ItemRequest:
    """One item for ``edit_items``: its photo, source prompt and ``(edit_id, prompt)`` edits."""

    image: Image.Image
    source_prompt: str
    edits: list[tuple[str, str]]
    # A reconstruction of this item made before (automatic strength's later tries, at another scale): kept as the
    # item's reconstruction and its edits are scored against it; its denoising rows are not run again.
    reconstruction: Image.Image | None = None
    # Per edit id, where the edit may change the photo (method/region.py); an edit without one takes the preset's
    # ``region`` (whole or auto).
    regions: dict[str, region.EditRegion] = field(default_factory=dict)
    # The photo's own upright pixels (uint8 (H, W, 3 or 4), alpha kept) that outputs are composited on; None = the
    # pixels of ``image``.
    pixels: np.ndarray | None = None

    def photo(self) -> np.ndarray:
        return self.pixels if self.pixels is not None else np.asarray(self.image.convert("RGB"))

    def region_of(self, edit_id: str, preset: Preset) -> region.EditRegion:
        return self.regions.get(edit_id) or region.EditRegion(preset.region)


@dataclass
class Timings:
    """Seconds an item spent in each phase (a batch's time divided by the items that shared it)."""

    encode_s: float = 0.0  # fit, VAE encode and the round-trip decode
    embed_s: float = 0.0  # text and image embeds
    invert_s: float = 0.0
    denoise_s: float = 0.0  # the reconstruction and every edit
    decode_s: float = 0.0
    score_s: float = 0.0
    region_s: float = 0.0  # outputs at the photo's size (region.finish)
    judge_s: float = 0.0  # automatic strength's judge
    batch_items: int = 1  # how many items shared the batch
    auto_tries: int = 1  # automatic strength: the most scales an edit of the item was tried at

    PHASES = ("encode_s", "embed_s", "invert_s", "denoise_s", "decode_s", "score_s", "region_s", "judge_s")

    @contextmanager
    def phase(self, name: str):
        """Adds the time spent inside the ``with`` block to the phase ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)

    def per_item(self) -> "Timings":
        """A batch's times as each of its ``batch_items`` items' share."""
        return dataclasses.replace(self, **{p: getattr(self, p) / self.batch_items for p in self.PHASES})

    def add(self, other: "Timings") -> None:
        """Another try's phase times added to these (automatic strength runs an item several times)."""
        for p in self.PHASES:
            setattr(self, p, getattr(self, p) + getattr(other, p))

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class ItemResult:
    """An item's images at the working size (``input``: the photo fitted to it), its outputs at the photo's own
    size (``full_*``: the reconstruction brought up, each edit composited by its region; ``photo``: the photo's
    own pixels) and the scores (``edit_scores`` include each edit's region fields, ``region.finish``)."""

    input: Image.Image  # the photo fitted to the working resolution
    vae_roundtrip: Image.Image
    reconstruction: Image.Image
    edits: dict[str, Image.Image]
    scores: dict[str, float | None]
    edit_scores: dict[str, dict[str, float | None]]
    timings: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)
    photo: np.ndarray | None = None
    full_reconstruction: np.ndarray | None = None
    full_edits: dict[str, np.ndarray] = field(default_factory=dict)
    region_masks: dict[str, np.ndarray] = field(default_factory=dict)


def fit_size(width: int, height: int, resolution: int, multiple: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """(w, h) with about ``resolution**2`` pixels, the photo's aspect ratio, both sides multiples of ``multiple``."""
    aspect = width / height
    if max(aspect, 1 / aspect) > max_aspect:
        raise InputError(f"aspect ratio {max(aspect, 1 / aspect):.1f}:1 exceeds the limit {max_aspect:g}:1")
    w = resolution * aspect**0.5
    h = resolution / aspect**0.5
    return max(multiple, int(round(w / multiple)) * multiple), max(multiple, int(round(h / multiple)) * multiple)


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, H, W, 3) uint8 tensor -> PIL images (one copy to the CPU)."""
    return [Image.fromarray(a) for a in pixels.cpu().numpy()]


def check_regions(request: ItemRequest, preset: Preset) -> None:
    """``InputError`` for a given mask whose size is not the photo's, or a region for an edit the item lacks."""
    ids = {edit_id for edit_id, _ in request.edits}
    height, width = request.photo().shape[:2]
    for edit_id, reg in request.regions.items():
        if edit_id not in ids:
            raise InputError(f"a region is given for edit {edit_id!r}, which the item does not have")
        if reg.mask is not None and reg.mask.shape != (height, width):
            raise InputError(f"the mask of edit {edit_id!r} is {reg.mask.shape[1]}x{reg.mask.shape[0]}, the photo is "
                             f"{width}x{height}: a mask must have the photo's size")


def finish_regions(result: ItemResult, request: ItemRequest, preset: Preset) -> None:
    """Fill ``result``'s outputs at the photo's own size: the reconstruction brought up; every edit composited by
    its region (``region.finish``), its region fields added to its scores (timed as ``region_s``)."""
    with result.timings.phase("region_s"):
        photo = request.photo()
        recon = np.asarray(result.reconstruction.convert("RGB"))
        result.photo = photo
        result.full_reconstruction = region.upsize(recon, photo)
        regions = {edit_id: request.region_of(edit_id, preset) for edit_id, _ in request.edits}
        # the studio-shot test once per photo, for every edit whose region is automatic
        product = region.studio_parts(photo) if any(r.mode in ("auto", "studio") for r in regions.values()) else None
        for edit_id, _ in request.edits:
            out, fields, mask = region.finish(photo, np.asarray(result.edits[edit_id].convert("RGB")), recon,
                                              regions[edit_id], preset.region_fill, product=product)
            result.full_edits[edit_id] = out
            result.region_masks[edit_id] = mask
            result.edit_scores[edit_id].update(fields)
            if fields["region_source"] != "whole" and fields["region_fraction"] == 0.0:
                result.warnings.append(f"edit {edit_id!r}: its region is empty ({fields['region_source']}): the output "
                                       "is the photo unchanged")
