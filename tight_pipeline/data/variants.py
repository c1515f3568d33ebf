"""Variant generation: N styled edits of every catalog item, from one inversion each.

    sets = load_style_sets()                       # configs/variants.yaml
    request = VariantRequest(n=4, style_set=sets["product"])
    edits = request.edits("mug-001", "a white ceramic mug")   # [(edit_id, prompt), ...]

Reproducible by construction: the item's order of the set's styles is drawn from ``sha256(item_id, set hash)``
(the *order seed*), variant k is the k-th style of that order, and its ``edit_id`` is named after the style
(``v-on-a-marble-kitchen-counter-3f9a1c``), not after k. So a re-run or a resumed run makes the same edits
under the same keys (and skips the done ones), and ``--n`` raised later only adds styles. The inversion
methods are deterministic given the prompt (DDIM, ReNoise; ``ddpm_ef`` uses the preset's seed), so a variant
is fixed by its style: a set with S styles gives at most S variants per item.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tight_pipeline.settings import configs_dir

MAX_VARIANTS = 64


class VariantError(ValueError):
    """Unknown style set, or a variant request a set cannot satisfy."""


@dataclass(frozen=True)
class StyleSet:
    name: str
    styles: tuple[str, ...]
    description: str = ""

    @property
    def hash(self) -> str:
        """12 hex characters over the phrases (not the name): recorded in every row and the MLflow run."""
        return hashlib.sha256(json.dumps(list(self.styles)).encode()).hexdigest()[:12]


def style_id(style: str) -> str:
    """``v-<slug>-<6 hex>``: a stable edit id for a style phrase (letters, digits and dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", _FIELD.sub("", style).lower()).strip("-")[:40].strip("-")
    return f"v-{slug or 'style'}-{hashlib.sha256(style.encode()).hexdigest()[:6]}"


_FIELD = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")


def prompt_for(style: str, source_prompt: str, metadata: dict | None = None) -> str:
    """The edit prompt: ``style`` appended to the source prompt, or, when it has ``{fields}``, the style with
    ``{source_prompt}`` and the item's metadata fields filled in ("{subject} on a marble counter")."""
    fields = _FIELD.findall(style)
    if not fields:
        return f"{source_prompt}, {style}"
    values = {"source_prompt": source_prompt, **{k: v for k, v in (metadata or {}).items() if isinstance(v, (str, int, float))}}
    missing = [f for f in fields if f not in values]
    if missing:
        raise VariantError(f"style {style!r} needs the item's metadata field(s) {missing}")
    return _FIELD.sub(lambda m: str(values[m.group(1)]), style)


@dataclass(frozen=True)
class VariantRequest:
    """``n`` variants per item from ``style_set``."""

    n: int
    style_set: StyleSet

    def __post_init__(self) -> None:
        if not 1 <= self.n <= MAX_VARIANTS:
            raise VariantError(f"variants: n = {self.n}; expected 1..{MAX_VARIANTS}")
        if self.n > len(self.style_set.styles):
            raise VariantError(f"variants: n = {self.n} but style set {self.style_set.name!r} has "
                               f"{len(self.style_set.styles)} styles (a variant is fixed by its style); "
                               "lower n or add styles")

    def order_seed(self, item_id: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{item_id}\0{self.style_set.hash}".encode()).digest()[:8], "big")

    def styles_for(self, item_id: str) -> list[str]:
        """The item's first ``n`` styles, in its own fixed order (a prefix of the same order for every n)."""
        import numpy as np

        order = np.random.default_rng(self.order_seed(item_id)).permutation(len(self.style_set.styles))
        return [self.style_set.styles[i] for i in order[: self.n]]

    def edits(self, item_id: str, source_prompt: str, metadata: dict | None = None) -> list[tuple[str, str]]:
        return [(style_id(s), prompt_for(s, source_prompt, metadata)) for s in self.styles_for(item_id)]

    def metadata(self, item_id: str) -> dict:
        """What every row of the item records about its variants."""
        return {"style_set": self.style_set.name, "style_set_hash": self.style_set.hash, "n": self.n,
                "order_seed": self.order_seed(item_id),
                "styles": {style_id(s): s for s in self.styles_for(item_id)}}


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> tuple[str, dict[str, StyleSet]]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    sets = {}
    for name, body in (data.get("style_sets") or {}).items():
        styles = body.get("styles") if isinstance(body, dict) else body
        if not isinstance(styles, list) or not styles or not all(isinstance(s, str) and s.strip() for s in styles):
            raise VariantError(f"{path}: style set {name!r} must list non-empty style phrases")
        if len(set(styles)) != len(styles):
            raise VariantError(f"{path}: style set {name!r} lists a style twice")
        sets[name] = StyleSet(name, tuple(s.strip() for s in styles),
                              body.get("description", "") if isinstance(body, dict) else "")
    default = data.get("default") or next(iter(sets), "")
    return default, sets


def load_style_sets(path: str | Path | None = None) -> dict[str, StyleSet]:
    p = Path(path) if path else configs_dir() / "variants.yaml"
    if not p.exists():
        raise VariantError(f"no style sets: {p} does not exist")
    return _load(str(p), p.stat().st_mtime)[1]


def load_style_set(ref: str | list[str] | tuple[str, ...] | None = None, path: str | Path | None = None) -> StyleSet:
    """A style set by name (``None``/"" = the file's default), or an inline list of phrases (per-item overrides)."""
    if isinstance(ref, (list, tuple)):
        styles = [s.strip() for s in ref if isinstance(s, str) and s.strip()]
        if len(styles) != len(ref) or not styles:
            raise VariantError("variants.styles: a list of non-empty style phrases, or a style set name")
        if len(set(styles)) != len(styles):
            raise VariantError("variants.styles lists a style twice")
        return StyleSet("inline", tuple(styles))
    p = Path(path) if path else configs_dir() / "variants.yaml"
    sets = load_style_sets(p)
    name = ref or _load(str(p), p.stat().st_mtime)[0]
    if name not in sets:
        raise VariantError(f"unknown style set {name!r} (known: {', '.join(sorted(sets))})")
    return sets[name]


def item_request(default: VariantRequest, override: object) -> VariantRequest:
    """The item's request: the run's, or the manifest row's ``variants: {n, styles}`` on top of it."""
    if override in (None, "", {}):
        return default
    if isinstance(override, str):
        try:
            override = json.loads(override)
        except json.JSONDecodeError:
            raise VariantError("variants: expected an object {n, styles}") from None
    if not isinstance(override, dict) or set(override) - {"n", "styles"}:
        raise VariantError("variants: expected an object with n and/or styles")
    n = override.get("n", default.n)
    if not isinstance(n, int) or isinstance(n, bool):
        raise VariantError(f"variants.n must be an integer, got {n!r}")
    styles = load_style_set(override["styles"]) if "styles" in override else default.style_set
    return VariantRequest(n, styles)
