"""Presets: named, frozen Tight Inversion settings a non-expert can pick, each with a stable content hash.

    preset = load_preset("balanced")
    preset.hash         # 12 hex chars over every setting (not the name or description)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tight_pipeline.settings import configs_dir

METHODS = ("ddim", "renoise", "ddpm_ef", "rf_inversion", "ledits_pp")
# Fields added after the first release, and the value at which each is left out of the hash: its default when
# it was added (auto_min_landed and auto_max_rivals have other defaults since), so that the hashes (and output
# folders) of presets that don't use a field stay what they were.
_OMITTED_FROM_HASH = {"gamma": 0.0, "eta": 0.0, "eta_start": 0.0, "eta_stop": 0.25, "fixed_point_iterations": 0,
                   "inversion_prompt": "source", "distilled_guidance": 3.5, "negative_source": False,
                   "auto_scales": (), "auto_min_landed": 0.6, "auto_min_kept_db": 26.0, "auto_max_rivals": 0,
                   "auto_rivals": (),
                   "renoise_early_t": 0, "renoise_early_average": 5, "renoise_reg_kl": 0.0, "renoise_reg_ac": 0.0,
                   "renoise_reg_steps": 0, "renoise_reg_rolls": 5, "cfg_sharpening": 1.0,
                   "region": "whole", "region_fill": "auto", "region_blend_start": 1.0,
                   "ledits_skip": 0.15, "ledits_threshold": 0.9, "ledits_source_guidance": 0.0,
                   "sampler": "ddim", "guidance_mode": "cfg"}
# ``name@auto``: the candidate adapter scales tried, strongest first (see method/auto/strength.py).
DEFAULT_AUTO_SCALES = (1.0, 0.4, 0.0)


class PresetError(ValueError):
    """Unknown preset name or invalid preset values."""


@dataclass(frozen=True)
class Preset:
    """One full set of Tight Inversion settings.

    Attributes:
        name: the name users pick (``balanced``).
        method: inversion method: ``ddim``, ``renoise`` (fixed-point refinement) or ``ddpm_ef``
            (edit-friendly DDPM: per-step noise maps, exact reconstruction; uses ``seed``) for SD/SDXL;
            ``rf_inversion`` (controlled flow ODEs, Rout et al.) for FLUX; ``ledits_pp``: not Tight Inversion but the
            peer editor LEDITS++ (diffusers' pipeline on the same SDXL weights, text only: the adapter scales are
            unused; ``method/ledits.py``), for benchmarks.
        steps: DDIM steps for inversion and for denoising (full inversion).
        inversion_scale: adapter scale during inversion and reconstruction (0 = plain, text-only).
        edit_scale: adapter scale during editing (the authors use the same value as inversion).
        guidance: classifier-free guidance for edits; inversion and reconstruction run at 1.0.
        seed: random seed of the ``ddpm_ef`` noise and of ReNoise's regularisation (the other DDIM paths are deterministic).
        renoise_iterations: fixed-point iterations per inversion step (``renoise`` only).
        renoise_average_last: how many of the last iterations' predictions are averaged.
        renoise_early_t: the ReNoise authors' schedule near the clean end: at timesteps below this (0 = off;
            theirs: 250) each inversion step averages its first ``renoise_early_average`` predictions (the DDIM
            guess's included; theirs: 5) instead of iterating ``renoise_iterations`` times.
        renoise_reg_kl, renoise_reg_ac, renoise_reg_steps, renoise_reg_rolls: ReNoise's noise regularisation
            (``method/regularization.py``): weights of the patch-KL and autocorrelation terms, gradient rounds
            (0 = off) and autocorrelation steps per round (theirs: 0.065, 20, 4, 5).
        negative_prompt: text of the unconditional branch for edits ("" = the model's empty prompt).
        negative_source: use each item's source prompt as its edits' negative prompt (the authors' demo
            switch "use source as negative"; overrides ``negative_prompt``): guidance then pushes away from
            what the photo shows towards what the edit asks.
        cfg_sharpening: the authors' demo "sharpening factor" of classifier-free guidance for edits
            (``method/editing.py::guide``): each edit's guidance difference is normalised to its largest magnitude,
            raised to this power (sign kept) and scaled back. 1.0 = plain CFG (the default); in 0.05..10.
        gamma: RF-Inversion forward control: 0 = plain flow-ODE inversion, 1 = straight to the target noise.
        eta: RF-Inversion reverse control: pull of edits back towards the input's latent (0 = none).
        eta_start, eta_stop: the part of the denoising steps (fractions, from the noisy end) where ``eta`` acts.
        fixed_point_iterations: RF-Inversion refinement of every inversion step towards the exact inverse of
            the Euler step (0 = plain explicit step).
        inversion_prompt: ``source`` (the item's prompt) or ``empty`` (the RF-Inversion authors' choice) for
            inversion and reconstruction.
        distilled_guidance: FLUX-dev's guidance embedding for edits (ignored by models without one; inversion
            and reconstruction use 1.0).
        auto_scales: automatic strength (``method/auto/strength.py``) when not empty: the candidate adapter scales
            (inversion and edit alike); each item's edits are tried strongest first and each keeps the strongest
            scale whose edit *landed* (the judge prefers the edit prompt to the source prompt and to every rival
            by at least ``auto_min_landed`` of the margin by which it prefers the source prompt for the photo)
            and stayed *faithful* (its least-changed half is at least ``auto_min_kept_db`` dB PSNR from the
            photo). ``inversion_scale`` / ``edit_scale`` are then unused.
        auto_max_rivals: the most rival answers the landed check weighs an edit against (``method/auto/rivals.py``:
            the phrases the run's edits take out and put in; 0 = the source prompt only); each costs one more
            judge prompt per judged image.
        auto_rivals: rival phrases the run may not ask about itself (a catalog's palette: ``[navy, teal]``),
            weighed first.
        region: where an edit without its own region may change the photo (``method/region.py``): ``studio`` (the
            default: ``auto`` on a studio shot with a plain backdrop, ``whole`` on any other photo), ``whole`` (the
            model's image, brought to the photo's size) or ``auto`` (where the edit departs from the reconstruction,
            snapped to the photo's edges; outside it the photo's own pixels). A manifest edit's ``region`` /
            ``mask_uri`` overrides it.
        region_fill: inside a region that is not ``whole``: ``edit`` (the edit brought to the photo's size),
            ``detail`` (the photo plus the edit's difference from the reconstruction: keeps labels and texture
            under a recolour; the label is tinted with the new colour), ``recolour`` (the body's fitted colour
            change on the photo's body pixels only: a label, print or logo of another colour keeps its own pixels;
            ``detail`` where the body has no colour) or ``auto`` (where the edit kept the structure: ``recolour`` on a
            studio shot's product, ``detail`` on any other region; ``edit`` where it drew new structure).
        region_blend_start: with a given mask, the fraction of the denoising steps drawn freely before the edit's
            latent starts keeping the inversion's outside its region (0 = blend at every step; 1, the default = never:
            the composite alone keeps the photo; on the demo model any blending cost colour edits their colour,
            docs/region.md).
        ledits_skip, ledits_threshold, ledits_source_guidance: LEDITS++'s inversion ``skip`` (the fraction of
            the steps left out at the noisy end), its edit mask's quantile ``edit_threshold`` (diffusers' defaults
            0.15, 0.9) and the inversion's ``source_guidance_scale``: 0 (the default, as diffusers' example inverts)
            inverts without the source prompt; above 0 with it, at that guidance (on the demo model 3.5 broke the
            reconstruction: 10.6 dB vs 26 dB at 0). ``guidance`` is its ``edit_guidance_scale``. ``ledits_pp`` only.
        sampler: how a step moves: ``ddim`` (DDIM; DDPM with ``ddpm_ef``'s noise maps), ``euler_ancestral`` (the
            Euler-ancestral sampler of few-step models such as SDXL-Turbo) or ``lcm`` (the LCM step of LCM / LCM-LoRA
            models, on LCM's own timesteps; at most 50 steps). The last two run with ``renoise`` only: its inversion
            keeps a noise map per step, corrected so that denoising lands on the inversion's own latents —
            ``inversion.invert_renoise_corrected``.
        guidance_mode: ``cfg`` (classifier-free guidance, ``guidance`` in 1..30) or ``cfgpp`` (CFG++: the edit's clean
            estimate from the guided prediction, re-noised with the unconditional one — ``editing.denoise``;
            ``guidance`` is then CFG++'s λ in 0..1; not with ``lcm``, whose step re-noises with its own map, nor
            ``cfg_sharpening``).
        description: one line for people choosing a preset.
    """

    name: str
    method: str = "ddim"
    steps: int = 50
    inversion_scale: float = 0.4
    edit_scale: float = 0.4
    guidance: float = 7.5
    seed: int = 0
    renoise_iterations: int = 0
    renoise_average_last: int = 1
    negative_prompt: str = ""
    gamma: float = 0.0
    eta: float = 0.0
    eta_start: float = 0.0
    eta_stop: float = 0.25
    fixed_point_iterations: int = 0
    inversion_prompt: str = "source"
    distilled_guidance: float = 3.5
    negative_source: bool = False
    auto_scales: tuple[float, ...] = ()
    auto_min_landed: float = 0.05
    auto_min_kept_db: float = 26.0
    auto_max_rivals: int = 16
    auto_rivals: tuple[str, ...] = ()
    renoise_early_t: int = 0
    renoise_early_average: int = 5
    renoise_reg_kl: float = 0.0
    renoise_reg_ac: float = 0.0
    renoise_reg_steps: int = 0
    renoise_reg_rolls: int = 5
    cfg_sharpening: float = 1.0
    region: str = "studio"
    region_fill: str = "auto"
    region_blend_start: float = 1.0
    ledits_skip: float = 0.15
    ledits_threshold: float = 0.9
    ledits_source_guidance: float = 0.0
    sampler: str = "ddim"
    guidance_mode: str = "cfg"
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.auto_scales, (list, tuple)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.auto_scales):
            # YAML gives a list: keep a hashable tuple, strongest first
            object.__setattr__(self, "auto_scales", tuple(sorted({float(v) for v in self.auto_scales}, reverse=True)))
        else:
            problems.append(f"auto_scales {self.auto_scales!r} must be a list of numbers")
        if isinstance(self.auto_rivals, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in self.auto_rivals):
            object.__setattr__(self, "auto_rivals", tuple(" ".join(v.split()) for v in self.auto_rivals))
        else:
            problems.append(f"auto_rivals {self.auto_rivals!r} must be a list of phrases (words an edit puts in)")
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {METHODS}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            problems.append(f"steps {self.steps!r} must be an integer in 1..1000")
        for key in ("inversion_scale", "edit_scale"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 2.0:
                problems.append(f"{key} {value!r} must be a number in 0..2")
        if self.guidance_mode not in ("cfg", "cfgpp"):
            problems.append(f"guidance_mode {self.guidance_mode!r} must be 'cfg' or 'cfgpp' (CFG++)")
        elif self.guidance_mode == "cfgpp":
            if not isinstance(self.guidance, (int, float)) or isinstance(self.guidance, bool) or not 0.0 <= self.guidance <= 1.0:
                problems.append(f"guidance {self.guidance!r} must be CFG++'s λ, a number in 0..1, with guidance_mode cfgpp")
            if self.method not in ("ddim", "renoise", "ddpm_ef") or self.sampler == "lcm":
                problems.append(f"guidance_mode cfgpp runs with the ddim, renoise and ddpm_ef methods and not the lcm "
                                f"sampler (got method {self.method}, sampler {self.sampler})")
            if self.cfg_sharpening != 1.0:
                problems.append("guidance_mode cfgpp takes no cfg_sharpening (leave it at 1.0)")
        elif not isinstance(self.guidance, (int, float)) or not 1.0 <= self.guidance <= 30.0:
            problems.append(f"guidance {self.guidance!r} must be a number in 1..30")
        if self.method == "renoise" and (
            not isinstance(self.renoise_iterations, int) or self.renoise_iterations < 1
            or not 1 <= self.renoise_average_last <= self.renoise_iterations
        ):
            problems.append(
                "renoise needs renoise_iterations >= 1 and 1 <= renoise_average_last <= renoise_iterations "
                f"(got {self.renoise_iterations}, {self.renoise_average_last})"
            )
        for key, low, high in (("renoise_early_t", 0, 1000), ("renoise_early_average", 1, 50),
                               ("renoise_reg_steps", 0, 20), ("renoise_reg_rolls", 1, 50)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                problems.append(f"{key} {value!r} must be an integer in {low}..{high}")
        for key in ("renoise_reg_kl", "renoise_reg_ac"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1000.0:
                problems.append(f"{key} {value!r} must be a number in 0..1000")
        for key in ("gamma", "eta", "eta_start", "eta_stop"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                problems.append(f"{key} {value!r} must be a number in 0..1")
        if not problems and self.eta_start > self.eta_stop:
            problems.append(f"eta_start {self.eta_start} is after eta_stop {self.eta_stop}")
        if not isinstance(self.fixed_point_iterations, int) or not 0 <= self.fixed_point_iterations <= 50:
            problems.append(f"fixed_point_iterations {self.fixed_point_iterations!r} must be an integer in 0..50")
        if (not isinstance(self.cfg_sharpening, (int, float)) or isinstance(self.cfg_sharpening, bool)
                or not 0.05 <= self.cfg_sharpening <= 10.0):
            problems.append(f"cfg_sharpening {self.cfg_sharpening!r} must be a number in 0.05..10 (1.0 = plain "
                            "classifier-free guidance; the authors' demo writes 0 for 'off', which is 1.0 here)")
        if self.region not in ("whole", "auto", "studio"):
            problems.append(f"region {self.region!r} must be 'studio', 'whole' or 'auto' (a mask is given per item or "
                            "edit)")
        if self.region_fill not in ("auto", "edit", "detail", "recolour"):
            problems.append(f"region_fill {self.region_fill!r} must be 'auto', 'edit', 'detail' or 'recolour'")
        if not isinstance(self.region_blend_start, (int, float)) or not 0.0 <= self.region_blend_start <= 1.0:
            problems.append(f"region_blend_start {self.region_blend_start!r} must be a number in 0..1")
        for key, low, high in (("ledits_skip", 0.0, 0.9), ("ledits_threshold", 0.0, 1.0),
                               ("ledits_source_guidance", 0.0, 30.0)):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                problems.append(f"{key} {value!r} must be a number in {low:g}..{high:g}")
        if self.sampler not in ("ddim", "euler_ancestral", "lcm"):
            problems.append(f"sampler {self.sampler!r} must be 'ddim', 'euler_ancestral' or 'lcm'")
        elif self.sampler != "ddim" and self.method != "renoise":
            problems.append(f"sampler {self.sampler} runs with method renoise (its noise-corrected inversion), "
                            f"not {self.method}")
        elif self.sampler == "lcm" and isinstance(self.steps, int) and self.steps > 50:
            problems.append(f"sampler lcm takes at most 50 steps (LCM's original_inference_steps), got {self.steps}")
        if self.method == "ledits_pp" and self.auto_scales:
            problems.append("automatic strength chooses Tight Inversion's adapter scale; LEDITS++ (ledits_pp) has none")
        if not isinstance(self.negative_source, bool):
            problems.append(f"negative_source {self.negative_source!r} must be true or false")
        if self.inversion_prompt not in ("source", "empty"):
            problems.append(f"inversion_prompt {self.inversion_prompt!r} must be 'source' or 'empty'")
        if not isinstance(self.distilled_guidance, (int, float)) or not 0.0 <= self.distilled_guidance <= 30.0:
            problems.append(f"distilled_guidance {self.distilled_guidance!r} must be a number in 0..30")
        if isinstance(self.auto_scales, tuple) and (any(not 0.0 <= v <= 2.0 for v in self.auto_scales)
                                                    or len(self.auto_scales) > 8):
            problems.append(f"auto_scales {list(self.auto_scales)} must be at most 8 numbers in 0..2")
        for key in ("auto_min_landed", "auto_min_kept_db"):
            if not isinstance(getattr(self, key), (int, float)):
                problems.append(f"{key} {getattr(self, key)!r} must be a number")
        if not isinstance(self.auto_max_rivals, int) or isinstance(self.auto_max_rivals, bool) \
                or not 0 <= self.auto_max_rivals <= 64:
            problems.append(f"auto_max_rivals {self.auto_max_rivals!r} must be an integer in 0..64")
        if problems:
            raise PresetError(f"preset {self.name!r}: " + "; ".join(problems))

    @property
    def auto(self) -> bool:
        """Automatic strength: the scale is chosen per item and edit among ``auto_scales``."""
        return bool(self.auto_scales)

    def settings(self) -> dict[str, Any]:
        """Every field that changes results (what the hash covers)."""
        data = dataclasses.asdict(self)
        data.pop("name")
        data.pop("description")
        data["inversion_scale"] = float(data["inversion_scale"])
        data["edit_scale"] = float(data["edit_scale"])
        data["guidance"] = float(data["guidance"])
        for key, default in _OMITTED_FROM_HASH.items():
            if data[key] == default:
                data.pop(key)
            elif isinstance(default, float):
                data[key] = float(data[key])
            elif isinstance(default, tuple):
                data[key] = list(data[key])
        if self.auto:  # the fixed scales are not used: leave them out so they cannot split equal presets
            data.pop("inversion_scale")
            data.pop("edit_scale")
        else:  # nor are the search's settings without a search
            for key in [k for k in data if k.startswith("auto_")]:
                data.pop(key)
        return data

    @functools.cached_property
    def hash(self) -> str:
        """12 hex digits of the settings' sha256 (computed once: the preset is frozen)."""
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, **self.settings(), "description": self.description}

    def to_yaml(self) -> str:
        return yaml.safe_dump({"presets": {self.name: {**self.settings(), "description": self.description}}}, sort_keys=False)

    def with_scale(self, scale: float) -> "Preset":
        """The same preset at another adapter scale (inversion and editing), named ``name@scale``."""
        return dataclasses.replace(self, name=f"{self.name}@{scale:g}", inversion_scale=scale, edit_scale=scale,
                                   auto_scales=())

    def with_auto(self, scales: tuple[float, ...] = DEFAULT_AUTO_SCALES) -> "Preset":
        """The same preset with automatic strength over ``scales``, named ``name@auto``."""
        return dataclasses.replace(self, name=f"{self.name.split('@')[0]}@auto", auto_scales=tuple(scales))

    def at_candidate(self, scale: float) -> "Preset":
        """One fixed-scale try of an automatic preset (same name and settings, scale fixed)."""
        return dataclasses.replace(self, inversion_scale=scale, edit_scale=scale, auto_scales=())


def load_presets(path: str | Path | None = None) -> dict[str, Preset]:
    path = Path(path) if path else configs_dir() / "presets.yaml"
    raw = yaml.safe_load(Path(path).read_text()) or {}
    fields = {f.name for f in dataclasses.fields(Preset)}
    out = {}
    for name, data in (raw.get("presets") or {}).items():
        if not isinstance(name, str):
            raise PresetError(f"preset name {name!r} in {path} is not a string (quote names such as \"off\" in YAML)")
        unknown = sorted(set(data or {}) - fields)
        if unknown:
            raise PresetError(f"preset {name!r} in {path}: unknown keys {unknown}")
        out[name] = Preset(name=name, **(data or {}))
    return out


def load_preset(name: str, path: str | Path | None = None) -> Preset:
    """The preset ``name``; ``name@0.3`` is that preset at adapter scale 0.3, ``name@auto`` with automatic strength."""
    presets = load_presets(path)
    base, _, scale = name.partition("@")
    if base not in presets:
        raise PresetError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    if scale == "auto":
        return presets[base] if presets[base].auto else presets[base].with_auto()
    if scale:
        try:
            return presets[base].with_scale(float(scale))
        except ValueError as exc:
            raise PresetError(f"preset {name!r}: {exc}") from exc
    return presets[base]
