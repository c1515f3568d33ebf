"""Variant generation: N styled variants per catalog item from one inversion each.

Each item's source prompt is extended with a variant style ("{source_prompt}, {style}"); the derived
manifest is written next to the outputs and run through the catalog flow.
"""

from __future__ import annotations

import json

from prefect import flow, task

from flows.catalog_localization import catalog_localization
from flows.tasks import IO_RETRIES
from tight_pipeline import storage
from tight_pipeline.manifest import read_manifest

DEFAULT_STYLES = [
    "on a white studio background", "on a marble kitchen counter", "outdoors in soft daylight",
    "on a wooden table, warm light", "in a minimalist living room", "on a dark slate surface",
]


@task(name="write-variant-manifest", **IO_RETRIES)
def write_variant_manifest(manifest: str, output: str, n: int, styles: list[str]) -> str:
    parsed = read_manifest(manifest)
    lines = []
    for item in parsed.items:
        edits = [{"edit_id": f"variant-{k:02d}", "prompt": f"{item.source_prompt}, {styles[k % len(styles)]}"} for k in range(n)]
        lines.append(json.dumps({"item_id": item.item_id, "image_uri": item.image_uri, "source_prompt": item.source_prompt,
                                 "edits": edits, "preset": item.preset, "metadata": item.metadata}))
    uri = storage.join(output, "_manifests", f"variants-{parsed.digest[:12]}-n{n}.jsonl")
    storage.write_bytes_atomic(uri, ("\n".join(lines) + "\n").encode())
    return uri


@flow(name="variant-generation", log_prints=True)
def variant_generation(manifest: str, output: str, n: int = 4, styles: list[str] | None = None,
                       preset: str = "balanced", model: str | None = None, actors: int = 1) -> dict:
    if n < 1:
        raise ValueError("n must be >= 1")
    derived = write_variant_manifest(manifest, output, n, styles or DEFAULT_STYLES)
    return catalog_localization(manifest=derived, output=output, preset=preset, model=model, actors=actors,
                                flow_label="variant-generation")
