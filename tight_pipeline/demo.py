"""The bundled demos.

- ``write_catalog_demo_inputs``: held-out synthetic product shots (never trained on) with colour, pattern and
  background edits, for the catalog demo model (the default of ``tight-pipeline demo``);
- ``write_demo_inputs``: real photos from scikit-image (no download) with a localization manifest, for real
  SDXL / FLUX weights (``tight-pipeline demo --photos --model ...``).
"""

from __future__ import annotations

import json

from PIL import Image

from tight_pipeline.data import storage

# (item_id, scikit-image loader, crop box or None, source prompt, locale -> edit prompt)
DEMO_ITEMS = [
    ("coffee-cup", "coffee", None, "a cup of coffee on a saucer",
     {"en-US": "a cup of coffee on a saucer, american diner", "ja-JP": "a cup of green tea on a saucer",
      "it-IT": "a cup of espresso on a saucer, marble table"}),
    ("coffee-cup-close", "coffee", (140, 0, 540, 400), "a close-up of a coffee cup",
     {"en-US": "a close-up of a red coffee cup", "ja-JP": "a close-up of a ceramic tea cup",
      "it-IT": "a close-up of a blue coffee cup"}),
    ("motorcycle", "stereo_motorcycle", None, "a red motorcycle in a studio",
     {"en-US": "a black motorcycle in a studio", "ja-JP": "a white motorcycle in a studio",
      "it-IT": "a red motorcycle on a street in Rome"}),
    ("rocket", "rocket", None, "a rocket on a launch pad",
     {"en-US": "a rocket on a launch pad at night", "ja-JP": "a rocket on a launch pad by the sea",
      "it-IT": "a rocket on a launch pad in the snow"}),
]


def write_demo_inputs(folder: str) -> str:
    """Write the demo photos and ``manifest.jsonl`` under ``folder`` (any fsspec URL); returns the manifest URL."""
    from skimage import data

    lines = []
    for item_id, loader, box, source, locales in DEMO_ITEMS:
        pixels = data.stereo_motorcycle()[0] if loader == "stereo_motorcycle" else getattr(data, loader)()
        image = Image.fromarray(pixels).convert("RGB")
        if box:
            image = image.crop(box)
        image.thumbnail((512, 512))
        storage.write_bytes_atomic(storage.join(folder, "photos", f"{item_id}.png"), storage.encode_png(image))
        lines.append(json.dumps({"item_id": item_id, "image_uri": f"photos/{item_id}.png", "source_prompt": source,
                                 "locales": locales, "metadata": {"source": f"skimage.data.{loader}"}}))
    manifest = storage.join(folder, "manifest.jsonl")
    storage.write_bytes_atomic(manifest, ("\n".join(lines) + "\n").encode())
    return manifest


def write_catalog_demo_inputs(folder: str, count: int = 8, seed: int = 0) -> str:
    """Write ``count`` held-out product shots and ``manifest.jsonl`` (three edits each); returns the manifest URL.

    Shots come from the held-out stream the evaluation also draws from (indices from 1000 on, so they are
    not the evaluation's images either).
    """
    from tight_pipeline.demo_model.products import target_colour
    from tight_pipeline.demo_model.products import BACKGROUNDS, ProductSpec, caption, render_product
    from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET

    lines = []
    backgrounds = list(BACKGROUNDS)
    for i in range(count):
        spec = ProductSpec.sample(seed + HELDOUT_SEED_OFFSET, 1000 + i)
        shot = render_product(spec)
        item_id = f"{spec.colour}-{spec.kind}-{i:02d}"
        storage.write_bytes_atomic(storage.join(folder, "shots", f"{item_id}.png"), storage.encode_png(shot.image))
        colour = target_colour(spec.colour)
        pattern = {"plain": "striped", "striped": "dotted", "dotted": "plain"}[spec.pattern]
        background = backgrounds[(backgrounds.index(spec.background) + 1) % len(backgrounds)]
        edits = [
            {"edit_id": f"colour-{colour}", "prompt": caption(spec.kind, colour, spec.pattern, spec.background)},
            {"edit_id": f"pattern-{pattern}", "prompt": caption(spec.kind, spec.colour, pattern, spec.background)},
            {"edit_id": f"background-{background}", "prompt": caption(spec.kind, spec.colour, spec.pattern, background)},
        ]
        lines.append(json.dumps({"item_id": item_id, "image_uri": f"shots/{item_id}.png", "source_prompt": spec.caption,
                                 "edits": edits, "metadata": {"kind": spec.kind, "colour": spec.colour,
                                                              "pattern": spec.pattern, "background": spec.background,
                                                              "subject": spec.caption.split(" on a ")[0]}}))
    manifest = storage.join(folder, "manifest.jsonl")
    storage.write_bytes_atomic(manifest, ("\n".join(lines) + "\n").encode())
    return manifest
