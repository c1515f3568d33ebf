"""Manifest parsing/validation in every format, and presets."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from tight_pipeline.data.manifest import ManifestError, read_manifest
from tight_pipeline.method.presets import PresetError, Preset, load_preset, load_presets


def _records():
    return [
        {"item_id": "mug-1", "image_uri": "img/mug.png", "source_prompt": "a mug",
         "locales": {"de-DE": "ein Becher", "fr-FR": "une tasse"}, "sku": "123"},
        {"item_id": "mug-2", "image_uri": "s3://bucket/mug2.png", "source_prompt": "a mug",
         "edits": [{"edit_id": "blue", "prompt": "a blue mug"}], "preset": "faithful"},
        {"item_id": "mug-1", "image_uri": "x.png", "source_prompt": "dup", "edits": [{"edit_id": "a", "prompt": "b"}]},
        {"item_id": "bad/id", "image_uri": "x.png", "source_prompt": "a", "edits": [{"edit_id": "a", "prompt": "b"}]},
        {"item_id": "no-edits", "image_uri": "x.png", "source_prompt": "a"},
    ]


def _check(m):
    assert [i.item_id for i in m.items] == ["mug-1", "mug-2"]
    assert [e.edit_id for e in m.items[0].edits] == ["de-DE", "fr-FR"]
    assert m.items[0].image_uri.endswith("/img/mug.png")  # relative to the manifest's folder
    assert m.items[0].metadata.get("sku") == "123"  # extra columns pass through
    assert m.items[1].preset == "faithful"
    assert [(b.row, b.item_id) for b in m.invalid] == [(3, "mug-1"), (4, "bad/id"), (5, "no-edits")]
    assert "duplicate item_id (first seen at row 1)" in m.invalid[0].message()
    assert "manifest row 4" in m.invalid[1].message() and "not a safe id" in m.invalid[1].message()
    assert "no edits" in m.invalid[2].reason


def _write(fmt: str, tmp_path) -> str:
    """The same records as a manifest in ``fmt``; returns its URL (CSV and Parquet hold JSON text columns)."""
    import fsspec

    if fmt == "jsonl":
        path = tmp_path / "m.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in _records()) + "\n\n")
        return str(path)
    rows = pd.DataFrame([{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
                         for r in _records()])
    if fmt == "csv":
        rows.to_csv(tmp_path / "m.csv", index=False)
        return f"file://{tmp_path / 'm.csv'}"
    with fsspec.open("memory://manifests/m.parquet", "wb") as f:
        rows.to_parquet(f, index=False)
    return "memory://manifests/m.parquet"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_reads_the_same_items_and_invalid_rows(fmt, tmp_path):
    _check(read_manifest(_write(fmt, tmp_path), set(load_presets())))


def test_masks_and_regions_in_a_manifest(tmp_path):
    """``mask_uri`` on an item and on an edit (relative to the manifest), ``region`` per edit; a region ``mask``
    without any mask and an unknown region are invalid rows naming the edit."""
    records = [
        {"item_id": "a", "image_uri": "a.png", "source_prompt": "a", "mask_uri": "masks/a.png",
         "edits": [{"edit_id": "x", "prompt": "b"}, {"edit_id": "y", "prompt": "c", "region": "auto"},
                   {"edit_id": "z", "prompt": "d", "mask_uri": "masks/a-bg.png"}]},
        {"item_id": "b", "image_uri": "b.png", "source_prompt": "a", "edits": [{"edit_id": "x", "prompt": "b", "region": "mask"}]},
        {"item_id": "c", "image_uri": "c.png", "source_prompt": "a", "edits": [{"edit_id": "x", "prompt": "b", "region": "some"}]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    m = read_manifest(str(path))
    (a,) = m.items
    assert a.mask_uri == str(tmp_path / "masks" / "a.png")
    assert [(e.region, e.mask_uri) for e in a.edits] == [(None, None), ("auto", None), (None, str(tmp_path / "masks" / "a-bg.png"))]
    assert type(a).from_json(a.to_json()) == a  # what the workers get
    reasons = {bad.item_id: bad.reason for bad in m.invalid}
    assert "has region 'mask' but neither it nor the item has a mask_uri" in reasons["b"]
    assert "edits[0].region 'some' is not one of whole, auto, mask" in reasons["c"]


def test_missing_columns_and_unreadable_manifests_fail_before_any_work(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame([{"item_id": "a", "image": "x"}]).to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"lacks required column\(s\) \['image_uri', 'source_prompt'\]"):
        read_manifest(str(path))
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ManifestError, match="cannot tell the manifest format"):
        read_manifest(str(tmp_path / "m.txt"))


def test_presets_are_complete_frozen_and_hashed():
    presets = load_presets()
    assert {"off", "faithful", "balanced", "creative"} <= set(presets)
    assert presets["off"].inversion_scale == 0.0 and presets["off"].edit_scale == 0.0
    assert presets["balanced"].inversion_scale == 0.4 and presets["balanced"].guidance == 7.5
    assert presets["faithful"].method == "renoise"
    # the hash is over the settings: equal settings (a calibrated preset may equal a generic one) share it,
    # different settings never do
    for a in presets.values():
        for b in presets.values():
            assert (a.hash == b.hash) == (a.settings() == b.settings()), (a.name, b.name)
    assert len({p.hash for p in presets.values()}) >= 9
    assert load_preset("balanced").hash == load_preset("balanced").hash
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets["balanced"].steps = 3  # frozen
    scaled = load_preset("balanced@0.7")
    assert scaled.inversion_scale == scaled.edit_scale == 0.7 and scaled.hash != presets["balanced"].hash
    # name and description do not change the hash; any setting does
    assert Preset(name="x", description="y").hash == Preset(name="z").hash
    assert Preset(name="x", steps=49).hash != Preset(name="x").hash


def test_preset_errors_are_clear():
    with pytest.raises(PresetError, match="unknown preset 'ultra'; choose one of"):
        load_preset("ultra")
    with pytest.raises(PresetError, match="inversion_scale 3.0 must be a number in 0..2"):
        Preset(name="bad", inversion_scale=3.0)
    with pytest.raises(PresetError, match="method 'dpm'"):
        Preset(name="bad", method="dpm")
    with pytest.raises(PresetError, match="renoise needs"):
        Preset(name="bad", method="renoise", renoise_iterations=0)
