"""Edit benchmarks in PIE-Bench's own layout (Ju et al. 2023, "PnP Inversion"; cure-lab/PnPInversion), read and written.

    bench = read_bench("data/PIE-Bench")          # <folder>/mapping_file.json + <folder>/annotation_images/...
    bench.cases[0].mask                            # bool (H, W): the edited region, decoded as the authors decode it
    write_bench("out/pie-demo", cases, images)     # the same layout, masks run-length encoded

The layout, as the benchmark's evaluation code reads it: ``mapping_file.json`` maps a case key ("000000000000") to
``image_path`` (relative to ``annotation_images/``, under a category folder such as ``6_change_attribute_color_40/``),
``original_prompt`` and ``editing_prompt`` (the edited words in brackets: "a [red] mug" -> "a [blue] mug"),
``editing_instruction``, ``editing_type_id`` ("0".."9"), ``blended_word`` and ``mask``: the edited region, run-length
encoded as ``[start, length, start, length, ...]`` over the row-major flattened image. The authors decode it at
512×512 (all PIE-Bench images are 512×512) and then mark the one-pixel frame as edited "to avoid annotation errors
in boundary"; here it is decoded at the image's own size, frame included, so a set of other sizes (the demo set is
256 px) reads the same way. Prompts are used without their brackets, as the authors' scripts use them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAPPING = "mapping_file.json"
IMAGES = "annotation_images"
# PIE-Bench's ten edit types (``editing_type_id`` -> name), as its category folders name them.
EDIT_TYPES = {"0": "random", "1": "change_object", "2": "add_object", "3": "delete_object",
              "4": "change_attribute_content", "5": "change_attribute_pose", "6": "change_attribute_color",
              "7": "change_attribute_material", "8": "change_background", "9": "change_style"}
_FIELDS = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


class BenchError(ValueError):
    """A benchmark folder or case that cannot be read; the message names the case and the cause."""


@dataclass(frozen=True)
class Case:
    key: str
    image_path: str  # relative to annotation_images/
    original_prompt: str  # with its brackets, as written
    editing_prompt: str
    editing_instruction: str
    editing_type_id: str
    blended_word: str
    mask_rle: tuple[int, ...]

    @property
    def source_prompt(self) -> str:
        return unbracket(self.original_prompt)

    @property
    def target_prompt(self) -> str:
        return unbracket(self.editing_prompt)

    @property
    def edit_type(self) -> str:
        return EDIT_TYPES.get(self.editing_type_id, f"type {self.editing_type_id}")

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """The edited region (True = edited) for an image of ``size`` (width, height), frame included."""
        try:
            return rle_decode(self.mask_rle, (size[1], size[0]))
        except ValueError as exc:
            raise BenchError(f"case {self.key}: {exc}") from None


@dataclass(frozen=True)
class Bench:
    folder: str
    cases: tuple[Case, ...]

    def image_file(self, case: Case) -> Path:
        return Path(self.folder) / IMAGES / case.image_path


def unbracket(prompt: str) -> str:
    """The prompt without PIE's edit brackets, as the authors' scripts use it: "a [red] mug" -> "a red mug"."""
    return prompt.replace("[", "").replace("]", "")


def bracketed(prompt: str) -> list[str]:
    """The bracketed words of a PIE prompt: "a [red] mug on [grey]" -> ["red", "grey"]."""
    return re.findall(r"\[([^\]]*)\]", prompt)


def rle_decode(counts, shape: tuple[int, int]) -> np.ndarray:
    """PIE's run-length mask -> bool (H, W): runs ``[start, length, ...]`` over the flattened image set True (a run
    past the end is cut there, as the authors' ``mask_decode`` cuts it), then the one-pixel frame set True."""
    counts = list(counts)
    if len(counts) % 2:
        raise ValueError(f"mask has an odd number of run-length values ({len(counts)}): expected start, length pairs")
    h, w = shape
    flat = np.zeros(h * w, dtype=bool)
    for start, length in zip(counts[::2], counts[1::2]):
        if not isinstance(start, int) or not isinstance(length, int) or start < 0 or length < 0:
            raise ValueError(f"mask run ({start!r}, {length!r}) is not two non-negative integers")
        flat[start : start + min(length, h * w - start)] = True
    mask = flat.reshape(h, w)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def rle_encode(mask: np.ndarray) -> list[int]:
    """bool (H, W) -> PIE's runs ``[start, length, ...]`` of the True pixels, row-major (``rle_decode``'s inverse
    up to the frame, which decoding always marks)."""
    flat = np.concatenate([[False], np.asarray(mask, bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def read_bench(folder: str | Path, types: list[str] | None = None, limit: int | None = None) -> Bench:
    """The cases of a PIE-format folder in key order (``types``: only these ``editing_type_id``s; ``limit``: the
    first N after that). A missing field or image is a ``BenchError`` naming the case."""
    root = Path(folder).expanduser()
    path = root / MAPPING
    if not path.is_file():
        raise BenchError(f"{root} is not a PIE-Bench folder: {MAPPING} not found (expected {MAPPING} and {IMAGES}/)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: expected an object of cases keyed by id, got {type(raw).__name__}")
    cases = []
    for key in sorted(raw):
        item = raw[key]
        missing = [f for f in _FIELDS if not isinstance(item, dict) or f not in item]
        if missing:
            raise BenchError(f"case {key}: missing {', '.join(missing)} in {MAPPING}")
        if types and str(item["editing_type_id"]) not in types:
            continue
        if not (root / IMAGES / item["image_path"]).is_file():
            raise BenchError(f"case {key}: image {IMAGES}/{item['image_path']} not found")
        cases.append(Case(str(key), item["image_path"], item["original_prompt"], item["editing_prompt"],
                          item.get("editing_instruction", ""), str(item["editing_type_id"]),
                          item.get("blended_word", ""), tuple(item["mask"])))
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise BenchError(f"{path}: no cases" + (f" of edit types {types}" if types else ""))
    return Bench(str(root), tuple(cases))


def write_bench(folder: str | Path, cases: list[Case], images: dict[str, Image.Image]) -> Path:
    """Write ``cases`` and their images (by case key) in PIE's layout; returns the mapping file's path."""
    root = Path(folder)
    mapping = {}
    for case in cases:
        target = root / IMAGES / case.image_path
        target.parent.mkdir(parents=True, exist_ok=True)
        images[case.key].save(target)
        mapping[case.key] = {"image_path": case.image_path, "original_prompt": case.original_prompt,
                             "editing_prompt": case.editing_prompt, "editing_instruction": case.editing_instruction,
                             "editing_type_id": case.editing_type_id, "blended_word": case.blended_word,
                             "mask": list(case.mask_rle)}
    (root / MAPPING).write_text(json.dumps(mapping, indent=1))
    return root / MAPPING
