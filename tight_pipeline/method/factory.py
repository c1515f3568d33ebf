"""The engines, found through one registry keyed by the model spec's family.

    engine = load_engine(resolve_model_spec("catalog-demo"))     # TightInversion (SD / SDXL)
    engine = load_engine(resolve_model_spec("tiny-flux"))        # FluxTightInversion
    engine = load_engine(resolve_model_spec("passthrough"))      # PassthroughEngine

Every engine implements ``EditEngine`` (``edit_items`` over a batch, ``edit_item`` for one, ``multiple``,
``finish_outputs``) and is named here as ``module:Class``, imported when first loaded: the SDXL and FLUX engines do
not import each other, and nothing above the engine names a class. A spec may name its own engine class
(``engine: package.module:Class`` in its YAML: an engine outside this package, or a test's engine in
``tight_pipeline/testing/engines.py``); it is imported in each worker, so it works on every node of a cluster.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from tight_pipeline.method.items import ItemRequest, ItemResult
from tight_pipeline.method.presets import Preset
from tight_pipeline.method.specs import ModelError, ModelSpec

ENGINES: dict[str, str] = {
    "sdxl": "tight_pipeline.method.sdxl:TightInversion",
    "sd": "tight_pipeline.method.sdxl:TightInversion",
    "flux": "tight_pipeline.method.flux:FluxTightInversion",
    "passthrough": "tight_pipeline.method.passthrough:PassthroughEngine",
}


@runtime_checkable
class EditEngine(Protocol):
    """What the worker, the CLI and automatic strength use of an engine."""

    multiple: int  # working sizes are multiples of this
    finish_outputs: bool  # results carry their outputs at the photo's size (False: the worker finishes them)

    def edit_items(self, requests: list[ItemRequest], preset: Preset, progress=None) -> list[ItemResult | Exception]:
        ...

    def edit_item(self, image, source_prompt, edits, preset: Preset, progress=None) -> ItemResult:
        ...


def engine_class(spec: ModelSpec) -> type:
    """The class ``spec`` loads into: its own ``engine`` if it names one, else its family's."""
    target = spec.engine or ENGINES.get(spec.family)
    if target is None:
        raise ModelError(f"model {spec.name!r}: no engine for family {spec.family!r} (known: {', '.join(ENGINES)})")
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"model {spec.name!r}: engine {target!r} cannot be imported ({exc})") from None


def load_engine(spec: ModelSpec, clip_model: str | None = None) -> EditEngine:
    """Load ``spec``'s weights into its engine.

    ``clip_model``: a local CLIP folder for edit scores and the automatic-strength judge; without it the spec's
    own ``clip`` (if any) is used."""
    engine = engine_class(spec).from_spec(spec, clip_model or spec.clip)
    if not isinstance(engine, EditEngine):
        raise ModelError(f"model {spec.name!r}: {type(engine).__name__} does not implement the engine interface "
                         f"(edit_items, edit_item, multiple, finish_outputs)")
    return engine
