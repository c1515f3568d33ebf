"""Automatic checks on every output before a person looks: named profiles in ``configs/checks.yaml``.

    profile = load_profile("marketplace-white")
    found = profile.evaluate(output_pixels, photo_size=(w, h), kept_db=38.2, product=mask)   # -> Checked
    found.failed        # ("backdrop",): the names of the checks the output failed, in the profile's order
    found.measures      # {"long_side": 1024, "backdrop_share": 0.71, ...}: what was measured, for the review

The worker evaluates its run's profile on every ok output (``pipeline/actor.py``) and writes the profile's name,
the failed checks (``checks_failed``: comma-separated, ``""`` = passed) and the measures (``checks``: JSON) into the
output's scores row. The review app queues the failures; ``publish`` refuses them unless the approval says
``override_checks``. The product mask comes from the caller (the studio-shot product of the method's automatic
region): this module only measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from tight_pipeline.settings import configs_dir

DEFAULT = "basic"


class ChecksError(ValueError):
    """A profile that does not exist or does not parse (the message names it and the cause)."""


@dataclass(frozen=True)
class Checked:
    profile: str
    failed: tuple[str, ...] = ()
    measures: dict = field(default_factory=dict)

    def columns(self) -> dict:
        """The scores row's columns."""
        return {"checks_profile": self.profile, "checks_failed": ",".join(self.failed),
                "checks": json.dumps(self.measures, sort_keys=True) if self.measures else None}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    same_size: bool = False
    min_kept_db: float | None = None
    min_long_side: int = 0
    backdrop_rgb: tuple[int, int, int] | None = None
    backdrop_tolerance: float = 8.0
    backdrop_min_share: float = 0.95
    product_share: tuple[float, float] | None = None

    def __post_init__(self):
        where = f"checks profile {self.name!r}"
        if self.backdrop_rgb is not None and (len(self.backdrop_rgb) != 3
                                              or not all(0 <= int(c) <= 255 for c in self.backdrop_rgb)):
            raise ChecksError(f"{where}: backdrop_rgb is three numbers 0-255, got {list(self.backdrop_rgb)}")
        if not 0 <= self.backdrop_tolerance <= 255:
            raise ChecksError(f"{where}: backdrop_tolerance is 0-255, got {self.backdrop_tolerance}")
        if not 0 < self.backdrop_min_share <= 1:
            raise ChecksError(f"{where}: backdrop_min_share is in (0, 1], got {self.backdrop_min_share}")
        if self.product_share is not None:
            lo, hi = self.product_share
            if not 0 <= lo < hi <= 1:
                raise ChecksError(f"{where}: product_share is [min, max] with 0 <= min < max <= 1, got "
                                  f"{list(self.product_share)}")
        if self.min_long_side < 0:
            raise ChecksError(f"{where}: min_long_side is >= 0, got {self.min_long_side}")

    @property
    def needs_product(self) -> bool:
        return self.backdrop_rgb is not None or self.product_share is not None

    def evaluate(self, output: np.ndarray, photo_size: tuple[int, int] | None = None, kept_db: float | None = None,
                 product: np.ndarray | None = None) -> Checked:
        """Measure ``output`` (H, W, 3 uint8) against the profile. ``photo_size``: the photo's (width, height);
        ``kept_db``: the output's PSNR vs the photo outside the edit's region (None: the edit had no region);
        ``product``: the product's mask (bool H, W) or None when no plain backdrop was found."""
        height, width = output.shape[:2]
        failed, measures = [], {}
        if self.same_size and photo_size is not None:
            measures["size"] = [width, height]
            if (width, height) != tuple(photo_size):
                failed.append("same_size")
        if self.min_kept_db is not None and kept_db is not None and np.isfinite(kept_db):
            measures["kept_db"] = round(float(kept_db), 2)
            if kept_db < self.min_kept_db:
                failed.append("kept")
        if self.min_long_side:
            measures["long_side"] = max(width, height)
            if max(width, height) < self.min_long_side:
                failed.append("long_side")
        if self.needs_product and product is None:
            measures["product"] = "no plain backdrop found"
        if self.backdrop_rgb is not None:
            share = None
            if product is not None and (~product).any():
                distance = np.abs(output[..., :3][~product].astype(np.int16) - np.array(self.backdrop_rgb)).max(-1)
                share = float((distance <= self.backdrop_tolerance).mean())
                measures["backdrop_share"] = round(share, 4)
            if share is None or share < self.backdrop_min_share:
                failed.append("backdrop")
        if self.product_share is not None:
            share = float(product.mean()) if product is not None else None
            if share is not None:
                measures["product_share"] = round(share, 4)
            if share is None or not self.product_share[0] <= share <= self.product_share[1]:
                failed.append("product_share")
        return Checked(self.name, tuple(failed), measures)


def words(failed: str, measures: str | None, profile: Profile | None = None) -> str:
    """A failed-checks cell in words a catalog manager reads ("" when it passed)."""
    if not failed:
        return ""
    got = json.loads(measures) if measures else {}
    said = []
    for name in failed.split(","):
        if name == "same_size" and "size" in got:
            said.append(f"not the photo's size ({got['size'][0]}x{got['size'][1]})")
        elif name == "kept" and "kept_db" in got:
            said.append(f"changes the photo outside the edit ({got['kept_db']:.0f} dB kept"
                        + (f", {profile.min_kept_db:g} needed)" if profile else ")"))
        elif name == "long_side" and "long_side" in got:
            said.append(f"too small ({got['long_side']} px long side"
                        + (f", {profile.min_long_side} needed)" if profile else ")"))
        elif name == "backdrop":
            said.append("backdrop not the target colour" + (f" ({100 * got['backdrop_share']:.0f}% of it is)"
                                                            if "backdrop_share" in got else " (no plain backdrop)"))
        elif name == "product_share":
            said.append("product's share of the frame out of range" + (f" ({100 * got['product_share']:.0f}%)"
                                                                      if "product_share" in got else ""))
        else:
            said.append(name)
    return "failed checks: " + "; ".join(said)


_FIELDS = {f.name for f in fields(Profile)} - {"name"}


@lru_cache(maxsize=8)
def load_profiles(path: str | None = None) -> dict[str, Profile]:
    p = Path(path) if path else configs_dir() / "checks.yaml"
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ChecksError(f"checks profiles {p}: {exc}") from None
    profiles = {}
    for name, body in raw.items():
        body = body or {}
        unknown = set(body) - _FIELDS
        if unknown:
            raise ChecksError(f"checks profile {name!r} ({p}): unknown settings {sorted(unknown)}; known: "
                              f"{sorted(_FIELDS)}")
        for key in ("backdrop_rgb", "product_share"):
            if body.get(key) is not None:
                body[key] = tuple(body[key])
        profiles[name] = Profile(name=name, **body)
    return profiles


def load_profile(name: str | None = None) -> Profile:
    profiles = load_profiles()
    name = name or DEFAULT
    if name not in profiles:
        raise ChecksError(f"unknown checks profile {name!r}: configs/checks.yaml has {', '.join(profiles)}")
    return profiles[name]
