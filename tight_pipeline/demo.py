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


def write_catalog_demo_inputs(folder: str, count: int = 8, seed: int = 0, size: int = 256) -> str:
    """Write ``count`` held-out product shots and ``manifest.jsonl`` (three edits each); returns the manifest URL.

    Shots come from the held-out stream the evaluation also draws from (indices from 1000 on, so they are
    not the evaluation's images either), rendered at ``size`` px (the model works at 64: outputs are composited at
    the shot's size, where a label's pixels can be seen), each with its printed near-white emblem.
    """
    import dataclasses

    from tight_pipeline.demo_model.products import target_colour
    from tight_pipeline.demo_model.products import BACKGROUNDS, ProductSpec, caption, render_product
    from tight_pipeline.demo_model.products import HELDOUT_SEED_OFFSET

    lines = []
    backgrounds = list(BACKGROUNDS)
    for i in range(count):
        spec = dataclasses.replace(ProductSpec.sample(seed + HELDOUT_SEED_OFFSET, 1000 + i), logo=True)
        shot = render_product(spec, size=size)
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


# The demo benchmark's edit types: PIE-Bench type id -> what changes on a shot. PIE's add / delete object, pose,
# material and style edits have nothing to act on in the demo model's vocabulary (one product, colour, pattern,
# backdrop) and are left out.
BENCH_TYPES = ("0", "1", "4", "6", "8")


def write_demo_bench(folder: str, shots: int = 12, size: int = 256, seed: int = 7) -> str:
    """A PIE-Bench-format set of held-out demo shots rendered at ``size`` px (``data/piebench.py``'s layout): ``shots``
    cases of each edit type in ``BENCH_TYPES``, each on its own shot, with bracketed prompts and the generator's true
    edited region as the run-length mask — colour (6), pattern (4: attribute content), backdrop (8: the mask is the
    background), object (1: mug -> bottle ..., the mask is both products' union) and colour + pattern (0: random).
    Returns the mapping file's path."""
    import dataclasses
    import difflib

    from tight_pipeline.data.piebench import EDIT_TYPES, Case, rle_encode, write_bench
    from tight_pipeline.demo_model.products import BACKGROUNDS, HELDOUT_SEED_OFFSET, KINDS, ProductSpec, render_product

    def bracket(source: str, target: str) -> tuple[str, str]:
        """Both captions with the words that differ in brackets, PIE's way ("a [red] mug" -> "a [blue] mug")."""
        a, b = source.split(), target.split()
        for tag, i1, i2, j1, j2 in reversed(difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()):
            if tag != "equal":
                a[i1:i2] = [f"[{w}]" for w in a[i1:i2]]
                b[j1:j2] = [f"[{w}]" for w in b[j1:j2]]
        return " ".join(a), " ".join(b)

    cases, images = [], {}
    for t, type_id in enumerate(BENCH_TYPES):
        for i in range(shots):
            spec = ProductSpec.sample(seed + HELDOUT_SEED_OFFSET, i * len(BENCH_TYPES) + t)
            colour = next(c for c in ("blue", "red", "green", "yellow", "purple") if c != spec.colour)
            pattern = "dotted" if spec.pattern == "striped" else "striped"
            backdrop = next(b for b in ("mint", "grey", "beige", "white") if b != spec.background and b in BACKGROUNDS)
            kind = KINDS[(KINDS.index(spec.kind) + 1) % len(KINDS)]
            change = {"0": dict(colour=colour, pattern=pattern), "1": dict(kind=kind), "4": dict(pattern=pattern),
                      "6": dict(colour=colour), "8": dict(background=backdrop)}[type_id]
            target = dataclasses.replace(spec, **change)
            shot = render_product(spec, size)
            if type_id == "8":
                mask = ~shot.mask
            elif type_id == "1":
                mask = shot.mask | render_product(target, size).mask
            else:
                mask = shot.mask
            key = f"{type_id}{i:011d}"
            cases.append(Case(key, f"{type_id}_{EDIT_TYPES[type_id]}_{shots}/{key}.png",
                              *bracket(spec.caption, target.caption), f"change the {' and '.join(change)} to {' '.join(change.values())}", type_id,
                              " ".join(f"{getattr(spec, k)} {v}" for k, v in change.items()), tuple(rle_encode(mask))))
            images[key] = shot.image
    return str(write_bench(folder, cases, images))
