"""The engine for a model spec's family: the one module that knows every engine class.

    engine = load_engine(resolve_model_spec("catalog-demo"))     # TightInversion (SD / SDXL)
    engine = load_engine(resolve_model_spec("tiny-flux"))        # FluxTightInversion
    engine = load_engine(resolve_model_spec("passthrough"))      # PassthroughEngine

The SDXL engine (``runner``) and the FLUX engine (``flux``, a subclass) do not import each other; this factory
imports both, and everything above the engine loads models through it.
"""

from __future__ import annotations

from tight_pipeline.method.specs import ModelSpec
from tight_pipeline.method.sdxl import TightInversion


def load_engine(spec: ModelSpec, clip_model: str | None = None) -> TightInversion:
    """Load ``spec``'s weights into the engine of its family.

    ``clip_model``: a local CLIP folder for edit scores and the automatic-strength judge; without it the spec's
    own ``clip`` (if any) is used."""
    clip_model = clip_model or spec.clip
    if spec.family == "flux":
        from tight_pipeline.method.flux import FluxTightInversion

        return FluxTightInversion.from_spec(spec, clip_model)
    if spec.family == "passthrough":
        from tight_pipeline.method.passthrough import PassthroughEngine

        return PassthroughEngine.from_spec(spec, clip_model)
    return TightInversion.from_spec(spec, clip_model)
