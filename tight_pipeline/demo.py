"""The bundled demo: real photos from scikit-image (no download) and a localization manifest for them."""

from __future__ import annotations

import json

from PIL import Image

from tight_pipeline import storage

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
