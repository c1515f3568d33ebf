"""What a flow's run form offers in the Prefect UI: choices and bounds, not free text.

The shipped presets (``configs/presets.yaml``) and checks profiles (``configs/checks.yaml``) are lists to pick from
(a ``Literal``: Prefect renders a dropdown), a strength is a number bounded to the adapter's 0..1. The CLI's
``--preset NAME@S`` is split into these (``pipeline.config.split_preset``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tight_pipeline.data.checks import load_profiles
from tight_pipeline.method.presets import load_presets

PresetName = Literal[tuple(load_presets())]  # type: ignore[valid-type]
ChecksProfile = Literal[tuple(load_profiles())]  # type: ignore[valid-type]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PngLevel = Annotated[int, Field(ge=0, le=9, description="zlib level of the output PNGs (2: fast, ~23 % larger than 6)")]
Count = Annotated[int, Field(ge=1)]
Strength = Annotated[float, Field(ge=0.0, le=1.0, description="the image condition's strength (adapter scale): high "
                                  "keeps more of the photo, low lets the edit move further")]
