"""Variant derivation: style sets, per-item order, prefix stability, overrides, bad requests (no Ray, no model)."""

from __future__ import annotations

import json

import pytest

from tight_pipeline.data.manifest import read_manifest
from tight_pipeline.data.variants import (StyleSet, VariantError, VariantRequest, item_request, load_style_set,
                                     load_style_sets, prompt_for, style_id)


def test_style_sets_load_with_a_content_hash():
    sets = load_style_sets()
    assert {"product", "seasonal", "demo"} <= set(sets)
    assert load_style_set(None).name == "product"  # the file's default
    product = sets["product"]
    assert len(product.hash) == 12
    assert StyleSet("renamed", product.styles).hash == product.hash  # over the phrases, not the name
    assert StyleSet("product", product.styles[:-1]).hash != product.hash
    with pytest.raises(VariantError, match="unknown style set 'nope'.*known: demo, product, seasonal"):
        load_style_set("nope")


def test_each_item_has_its_own_fixed_order_and_larger_n_extends_it():
    product = load_style_set("product")
    two, four = VariantRequest(2, product), VariantRequest(4, product)
    for item in ("mug-1", "mug-2", "lamp-9"):
        assert four.styles_for(item)[:2] == two.styles_for(item)  # --n raised adds styles, keeps the first ones
        assert two.styles_for(item) == VariantRequest(2, product).styles_for(item)  # reproducible
        assert len(set(four.styles_for(item))) == 4
    firsts = {VariantRequest(1, product).styles_for(f"sku-{i}")[0] for i in range(20)}
    assert len(firsts) >= 3  # items do not all get the same style


def test_edit_ids_are_named_after_styles_and_prompts_fill_templates():
    assert style_id("on a marble kitchen counter").startswith("v-on-a-marble-kitchen-counter-")
    assert style_id("on a marble kitchen counter") != style_id("on a marble kitchen counter!")
    assert prompt_for("on a marble counter", "a white mug") == "a white mug, on a marble counter"
    assert prompt_for("{subject} at dusk", "a white mug on a table", {"subject": "a white mug"}) == "a white mug at dusk"
    with pytest.raises(VariantError, match=r"needs the item's metadata field\(s\) \['subject'\]"):
        prompt_for("{subject} at dusk", "a mug", {})


def test_requests_that_cannot_be_met_are_refused_with_the_reason():
    seasonal = load_style_set("seasonal")
    with pytest.raises(VariantError, match="n = 5 but style set 'seasonal' has 4 styles"):
        VariantRequest(5, seasonal)
    with pytest.raises(VariantError, match="expected 1..64"):
        VariantRequest(0, seasonal)
    default = VariantRequest(2, seasonal)
    assert item_request(default, None) is default
    assert item_request(default, {"n": 3}).n == 3
    assert item_request(default, {"styles": ["in the rain", "at night"]}).style_set.styles == ("in the rain", "at night")
    assert item_request(default, '{"n": 1, "styles": "product"}').style_set.name == "product"
    with pytest.raises(VariantError, match="variants.n must be an integer"):
        item_request(default, {"n": "two"})


def test_a_variant_manifest_streams_into_items_whose_edits_are_their_variants(tmp_path):
    rows = [
        {"item_id": "a", "image_uri": "a.png", "source_prompt": "a mug"},
        {"item_id": "b", "image_uri": "b.png", "source_prompt": "a lamp", "variants": {"n": 1, "styles": "seasonal"},
         "edits": [{"edit_id": "ignored", "prompt": "x"}]},
        {"item_id": "c", "image_uri": "c.png", "source_prompt": "a vase", "variants": {"n": 9}},
        {"item_id": "d", "image_uri": "d.png", "source_prompt": "a cup", "variants": {"styles": ["{subject} at dusk"], "n": 1}},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    request = VariantRequest(2, load_style_set("product"))
    parsed = read_manifest(str(manifest), variants=request)
    items = {i.item_id: i for i in parsed.items}
    assert [e.edit_id for e in items["a"].edits] == [e for e, _ in request.edits("a", "a mug")]
    assert items["a"].metadata["variants"]["style_set_hash"] == request.style_set.hash
    assert len(items["b"].edits) == 1 and items["b"].metadata["variants"]["style_set"] == "seasonal"
    reasons = {bad.item_id: bad.message() for bad in parsed.invalid}
    assert "n = 9 but style set 'product' has 6 styles" in reasons["c"]
    assert "manifest row 4 (item 'd')" in reasons["d"] and "metadata field(s) ['subject']" in reasons["d"]


def test_variants_command_refuses_an_impossible_request_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["variants", "--manifest", str(tmp_path / "m.jsonl"), "--output", str(tmp_path / "o"),
                                      "--n", "7", "--styles", "seasonal"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: variants: n = 7 but style set 'seasonal' has 4 styles "
                                                       "(a variant is fixed by its style); lower n or add styles")
