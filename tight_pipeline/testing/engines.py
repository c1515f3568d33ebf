"""Engines the tests load through a model spec's ``engine`` field (``method/factory.py``), never the product's.

    spec: {name: crash-passthrough, family: passthrough, base: none, resolution: 64,
           engine: "tight_pipeline.testing.engines:CrashingPassthrough"}
"""

from __future__ import annotations

import os

from tight_pipeline.method.passthrough import PassthroughEngine


class CrashingPassthrough(PassthroughEngine):
    """The passthrough engine, except that an item whose source prompt starts with ``!crash`` ends its worker
    process (``os._exit``) as an out-of-memory kill or a segfault in native code would: how the bounded-attempts
    guarantee is tested."""

    def edit_items(self, requests, preset, progress=None):
        if any(req.source_prompt.startswith("!crash") for req in requests):
            os._exit(70)  # the worker dies mid-batch
        return super().edit_items(requests, preset, progress)
