"""Automatic checks before a person looks (tight_pipeline/data/checks.py), what the review and publish do with
them, and the run form the Prefect UI renders (choices and bounds, flows/choices.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tight_pipeline.data import checks, scores, storage
from tight_pipeline.review import decisions
from tight_pipeline.review.publish import publish
from tight_pipeline.review.queue import Queue
from tests.test_review import _output


def _studio(backdrop=(255, 255, 255), size=(200, 160), box=(30, 20, 150, 140)):
    """An output: a plain backdrop with a dark product in ``box`` (x0, y0, x1, y1)."""
    w, h = size
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = backdrop
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = (40, 60, 160)
    product = np.zeros((h, w), dtype=bool)
    product[y0:y1, x0:x1] = True
    return pixels, product


def test_the_marketplace_profile_passes_a_white_well_framed_shot_and_names_each_failure():
    profile = checks.load_profile("marketplace-white")
    good, product = _studio(size=(1200, 1000), box=(150, 100, 1050, 900))
    found = profile.evaluate(good, photo_size=(1200, 1000), kept_db=48.0, product=product)
    assert found.failed == () and found.measures["backdrop_share"] == 1.0
    assert 0.5 <= found.measures["product_share"] <= 0.9
    grey, product = _studio(backdrop=(228, 228, 228), size=(1200, 1000), box=(150, 100, 1050, 900))
    assert profile.evaluate(grey, (1200, 1000), 48.0, product).failed == ("backdrop",)
    small, product = _studio(size=(200, 160), box=(10, 10, 30, 30))
    found = profile.evaluate(small, photo_size=(400, 320), kept_db=22.0, product=product)
    assert found.failed == ("same_size", "kept", "long_side", "product_share")
    assert profile.evaluate(good, (1200, 1000), 48.0, product=None).failed == ("backdrop", "product_share")
    said = checks.words(",".join(found.failed), json.dumps(found.measures), profile)
    assert "not the photo's size (200x160)" in said and "22 dB kept, 30 needed" in said and "too small" in said


def test_the_basic_profile_checks_size_and_what_the_region_kept_only():
    basic = checks.load_profile()  # the default
    pixels, _ = _studio()
    assert basic.name == "basic" and not basic.needs_product
    assert basic.evaluate(pixels, (200, 160), kept_db=None).failed == ()  # a whole-photo edit has no outside
    assert basic.evaluate(pixels, (200, 160), kept_db=29.0).failed == ("kept",)
    columns = basic.evaluate(pixels, (200, 161), kept_db=35.0).columns()
    assert columns["checks_profile"] == "basic" and columns["checks_failed"] == "same_size"
    assert json.loads(columns["checks"]) == {"kept_db": 35.0, "size": [200, 160]}


def test_an_unknown_profile_or_a_bad_setting_is_one_line(tmp_path):
    from tight_pipeline.pipeline.config import JobConfig

    with pytest.raises(checks.ChecksError, match="unknown checks profile 'shop'.*basic"):
        JobConfig(manifest="m.jsonl", output="out", checks="shop")
    bad = tmp_path / "checks.yaml"
    bad.write_text("x:\n  backdrop_rgb: [300, 0, 0]\n")
    with pytest.raises(checks.ChecksError, match="'x': backdrop_rgb is three numbers 0-255"):
        checks.load_profiles(str(bad))
    bad.write_text("x:\n  backdrop_colour: white\n")
    with pytest.raises(checks.ChecksError, match="unknown settings \\['backdrop_colour'\\]"):
        checks.load_profiles(str(bad))


def _with_failures(tmp_path, failed: dict[str, str]):
    """test_review's output of four items, its rows re-written with checks columns (``failed``: item -> checks)."""
    out = _output(tmp_path)
    rows = scores.read_latest(out)
    rows["checks_profile"] = "basic"
    rows["checks_failed"] = [failed.get(i, "") for i in rows["item_id"]]
    rows["checks"] = [json.dumps({"kept_db": 20.0}) if failed.get(i) else None for i in rows["item_id"]]
    rows["finished_at"] = rows["finished_at"].str.replace("10:00", "11:00")
    scores.write_part(out, "run1", rows.to_dict("records"))
    return out


def test_publish_holds_back_an_approval_that_failed_its_checks_unless_it_says_override(tmp_path):
    out = _with_failures(tmp_path, {"a": "kept", "b": "kept"})
    rows = {(r.preset_hash, r.item_id): r for _, r in scores.read_latest(out).iterrows()}
    decisions.write(out, [decisions.Decision.about(rows["h1", "a"], "approve", "ana"),
                          decisions.Decision.about(rows["h1", "b"], "approve", "ana", override_checks=True),
                          decisions.Decision.about(rows["h1", "c"], "approve", "ana")])
    to = str(tmp_path / "shop")
    done = publish(out, to)
    assert done.copied == 2 and done.skipped["approved but failed checks (no override)"] == 1
    assert storage.exists(f"{to}/b/blue.png") and storage.exists(f"{to}/c/blue.png")
    assert not storage.exists(f"{to}/a/blue.png")
    assert any("1 approved but failed checks" in line for line in done.lines())


def test_the_review_queues_failed_checks_and_puts_them_first(tmp_path):
    out = _with_failures(tmp_path, {"c": "kept"})
    q = Queue(out)
    assert q.keys("failed checks") == [("c", "blue")]
    assert q.keys("worst first")[0] == ("c", "blue")
    assert "failed checks: changes the photo outside the edit (20 dB kept, 30 needed)" in \
        q.card("c", "blue").outputs[0].words()
    assert "failed checks" not in q.card("a", "blue").outputs[0].words()


def test_the_run_form_offers_the_shipped_presets_and_profiles_as_choices_and_bounds_the_strength():
    from prefect.utilities.callables import parameter_schema

    from flows.catalog_localization import catalog_localization
    from flows.variant_generation import variant_generation
    from tight_pipeline.method.presets import load_presets

    for flow in (catalog_localization, variant_generation):
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        text = json.dumps(schema)
        props = schema["properties"]
        assert set(load_presets()) <= set(_enum(schema, props["preset"])), flow.name
        assert set(_enum(schema, props["checks"])) == {"basic", "marketplace-white", "none"}
        assert '"minimum": 0.0' in text and '"maximum": 1.0' in text
    with pytest.raises(Exception, match="strength"):  # what the UI's form would refuse, the flow refuses too
        catalog_localization.validate_parameters({"manifest": "m", "output": "o", "strength": 1.5})
    with pytest.raises(Exception, match="preset"):
        catalog_localization.validate_parameters({"manifest": "m", "output": "o", "preset": "balanced@0.3"})
    for bad in ({"png_level": 12}, {"actors": 0}, {"max_failure_rate": 1.5}, {"output_size": "large"}):
        with pytest.raises(Exception, match=next(iter(bad))):
            catalog_localization.validate_parameters({"manifest": "m", "output": "o", **bad})
    # the run form's defaults are JobConfig's own (one place), not copies
    from tight_pipeline.pipeline.config import JobConfig

    defaults = {k: v.get("default") for k, v in
                parameter_schema(catalog_localization.fn).model_dump_for_openapi()["properties"].items()}
    assert (defaults["actors"], defaults["png_level"], defaults["actor_wait_s"], defaults["checks"]) == \
        (JobConfig.actors, JobConfig.png_level, JobConfig.actor_wait_s, JobConfig.checks)


def _enum(schema, prop) -> list:
    found = []
    for option in prop.get("anyOf", [prop]):
        if "$ref" in option:
            option = schema["definitions"][option["$ref"].rsplit("/", 1)[1]]
        found += option.get("enum", [])
    return found


def test_the_cli_preset_becomes_the_flow_s_preset_strength_and_automatic_strength():
    from tight_pipeline.pipeline.config import join_preset, split_preset

    for text, parts in (("balanced@0.3", ("balanced", 0.3, False)), ("smoke@auto", ("smoke", None, True)),
                        ("faithful", ("faithful", None, False))):
        assert split_preset(text) == parts and join_preset(*parts) == text
