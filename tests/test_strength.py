"""Automatic strength: the rule on constructed scores, the strongest-first search on a stand-in engine, the
zero-shot judge on the tiny model (an ``auto`` manifest item through ``tight-pipeline run``: tests/test_cli.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from tight_pipeline.method.items import InputError, ItemRequest, ItemResult, Timings
from tight_pipeline.method.auto.rivals import changed_span, rival_phrases, rival_prompts, run_vocabulary
from tight_pipeline.method.auto.strength import Candidate, choose, edit_items_auto, final_choice, kept_psnr, landed_score
from tight_pipeline.method.presets import PresetError, Preset, load_preset


def C(scale, landed, kept=35.0):
    return Candidate(scale, landed, kept)


def test_the_rule_picks_the_strongest_scale_that_landed_and_stayed_faithful():
    tried = [C(1.0, 0.2), C(0.4, 0.5), C(0.0, 0.9)]
    assert choose(tried[:1], 0.4, 26.0) is None  # a weaker scale could still land: keep searching
    assert choose(tried[:2], 0.4, 26.0).scale == 0.4  # decided without trying 0.0
    assert final_choice(tried, 0.4, 26.0) == final_choice(list(reversed(tried)), 0.4, 26.0)  # order-free
    assert final_choice(tried, 0.4, 26.0).reason == "landed" and not final_choice(tried, 0.4, 26.0).flagged
    # the threshold is the preset's
    assert final_choice(tried, 0.6, 26.0).scale == 0.0 and final_choice(tried, 0.1, 26.0).scale == 1.0
    # landed everywhere but never faithful: the strongest that landed, flagged
    unfaithful = [C(1.0, 0.5, 20.0), C(0.4, 0.7, 18.0), C(0.0, -0.1, 40.0)]
    pick = final_choice(unfaithful, 0.4, 26.0)
    assert (pick.scale, pick.reason, pick.flagged) == (1.0, "landed-not-faithful", True)
    # faithful but too strong to land, and the weak one lands but breaks the photo: faithful wins only if landed
    assert final_choice([C(1.0, -0.1, 40.0), C(0.0, 0.5, 20.0)], 0.4, 26.0).reason == "landed-not-faithful"
    # nothing landed: the weakest, flagged
    pick = final_choice([C(1.0, -0.3), C(0.4, 0.1), C(0.0, 0.39)], 0.4, 26.0)
    assert (pick.scale, pick.reason, pick.flagged) == (0.0, "none-landed", True)


def test_the_landed_score_is_relative_to_the_photo():
    assert landed_score(0.5, 1.0) == 0.5 and landed_score(0.5, 0.25) == 2.0  # same margin, clearer judge
    assert landed_score(-0.2, 1.0) < 0  # the edit still shows the source prompt (or a rival)
    assert np.isfinite(landed_score(0.1, -0.3))  # a judge that cannot read the photo does not divide by zero


def test_rivals_are_what_the_run_s_edits_take_out_and_put_in():
    assert changed_span("a red striped mug on white", "a teal striped mug on white") == (
        "red", "teal", ["a"], ["striped", "mug", "on", "white"])
    assert changed_span("a mug on white", "a mug on a wooden table")[:2] == ("white", "a wooden table")
    assert changed_span("a mug", "a  mug")[:2] == ("", "")  # no change: nothing to weigh
    pairs = [("a red mug", "a teal mug"), ("a blue box", "a red box"), ("a red ball", "a green ball"),
             ("a mug on white", "a mug on a wooden table")]
    counts = run_vocabulary(pairs)
    assert counts == {"red": 3, "teal": 1, "blue": 1, "green": 1, "white": 1, "a wooden table": 1}
    # most frequent first, ties alphabetical; the preset's own first; bounded
    assert rival_phrases(counts) == ("red", "a wooden table", "blue", "green", "teal", "white")
    assert rival_phrases(counts, ("purple", "red"), limit=3) == ("purple", "red", "a wooden table")
    # the edit prompt with its new phrase swapped for every rival of as many words, not its own nor the source's
    assert rival_prompts("a red mug", "a teal mug", rival_phrases(counts)) == ["a blue mug", "a green mug", "a white mug"]
    assert rival_prompts("a red mug", "a teal mug", rival_phrases(counts), limit=1) == ["a blue mug"]
    assert rival_prompts("a red mug", "a mug", ("blue",)) == []  # a deletion has nothing to swap


def test_auto_rival_settings_are_validated_and_hashed_only_under_auto():
    auto = load_preset("balanced@auto")
    assert auto.auto_max_rivals == 16 and auto.settings()["auto_max_rivals"] == 16
    assert "auto_max_rivals" not in load_preset("balanced").settings()  # no search: no search settings hashed
    assert Preset(name="x", auto_scales=[1.0], auto_rivals=["light  blue"]).auto_rivals == ("light blue",)
    assert Preset(name="x", auto_scales=[1.0], auto_rivals=["navy"]).hash != Preset(name="x", auto_scales=[1.0]).hash
    with pytest.raises(PresetError, match="auto_rivals"):
        Preset(name="x", auto_rivals="navy")
    with pytest.raises(PresetError, match="auto_max_rivals"):
        Preset(name="x", auto_max_rivals=-1)


def test_kept_psnr_reads_the_untouched_half_only():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    product_edit = photo.copy()
    product_edit[:, :24] = 255 - product_edit[:, :24]  # 37 % of the picture repainted
    drifted = np.clip(photo.astype(int) + 40, 0, 255).astype(np.uint8)  # everything moved a little
    assert kept_psnr(Image.fromarray(product_edit), Image.fromarray(photo)) == 100.0
    assert kept_psnr(Image.fromarray(drifted), Image.fromarray(photo)) < 20.0


def test_auto_presets():
    auto = load_preset("balanced@auto")
    assert auto.auto_scales == (1.0, 0.4, 0.0) and auto.name == "balanced@auto"
    assert auto.hash == load_preset("auto").hash  # the named preset is balanced with automatic strength
    assert auto.hash != load_preset("balanced").hash and "auto_scales" not in load_preset("balanced").settings()
    assert "inversion_scale" not in auto.settings()  # unused under auto: cannot split equal presets
    assert Preset(name="x", auto_scales=[0, 1, 0.5]).auto_scales == (1.0, 0.5, 0.0)  # strongest first
    assert load_preset("auto@0.3").auto_scales == ()  # a fixed scale turns the search off
    with pytest.raises(PresetError, match="auto_scales"):
        Preset(name="x", auto_scales=[0.4, "high"])
    with pytest.raises(PresetError, match="auto_scales"):
        Preset(name="x", auto_scales=[3.0])


class ScaleStamp:
    """A stand-in engine: every edit is a flat image whose grey level is the scale it was made at (photos are
    black); the judge's errors make an edit land when its scale is at most what its prompt asks ("needs=0.4")."""

    clip = None

    def __init__(self):
        self.calls: list[tuple[float, list[tuple[str, list[str]]]]] = []

    def edit_items(self, requests, preset, progress=None):
        assert not preset.auto
        self.calls.append((preset.edit_scale, [(r.source_prompt, [e for e, _ in r.edits]) for r in requests]))
        out = []
        for r in requests:
            if r.source_prompt == "broken" and preset.edit_scale < 1.0:
                out.append(RuntimeError("out of memory"))
                continue
            level = 1 + int(preset.edit_scale * 200)
            edits = {e: Image.new("RGB", (8, 8), (level,) * 3) for e, _ in r.edits}
            out.append(ItemResult(r.image, r.image, Image.new("RGB", (8, 8), (level,) * 3), edits, {"psnr_vs_input": level},
                                  {e: {"edit_change": 1.0} for e, _ in r.edits}, Timings(invert_s=1.0), []))
        return out

    def prompt_errors(self, images, prompts):
        # photo (black): its source prompt fits (error 1), any edit prompt does not (e); an edit fits its prompt
        # when made at a scale at most what the prompt needs
        out = []
        for im, p in zip(images, prompts):
            level = np.asarray(im)[0, 0, 0]
            if "needs=" not in p:
                out.append(1.0 if level == 0 else np.e)
            elif level == 0:
                out.append(np.e)
            else:
                out.append(1.0 if (level - 1) / 200 <= float(p.split("needs=")[1]) + 1e-9 else np.e)
        return out


def test_the_search_runs_strongest_first_and_only_what_is_still_open():
    engine = ScaleStamp()
    photo = Image.new("RGB", (8, 8), (0, 0, 0))  # every edit differs from it everywhere: kept_db stays low...
    # ...so faithfulness is off here, and so are rivals (this judge reads "needs=" in any prompt)
    preset = Preset(name="t", auto_scales=[1.0, 0.4, 0.0], auto_min_kept_db=0.0, auto_max_rivals=0)
    requests = [ItemRequest(photo, "a", [("x", "needs=1.0"), ("y", "needs=0.4")]),
                ItemRequest(photo, "b", [("z", "needs=-1")])]  # never lands
    a, b = edit_items_auto(engine, requests, preset)
    # one batch per scale, holding only the edits still open
    assert engine.calls == [(1.0, [("a", ["x", "y"]), ("b", ["z"])]), (0.4, [("a", ["y"]), ("b", ["z"])]),
                            (0.0, [("b", ["z"])])]
    assert a.edit_scores["x"]["adapter_scale"] == 1.0 and a.edit_scores["y"]["adapter_scale"] == 0.4
    assert a.edit_scores["y"]["auto_reason"] == "landed" and a.edit_scores["y"]["auto_judge"] == "diffusion"
    assert a.edit_scores["y"]["auto_landed"] == pytest.approx(1.0)  # as clear as the photo's own prompt
    assert a.edit_scores["y"]["auto_rivals"] == 0
    assert [c["scale"] for c in json.loads(a.edit_scores["y"]["auto_candidates"])] == [1.0, 0.4]
    assert np.asarray(a.edits["y"])[0, 0, 0] == 81  # the image made at the chosen scale
    assert a.scores["psnr_vs_input"] == 201  # the reconstruction (and its scores) of the strongest scale
    assert a.timings.invert_s == 2.0 and a.timings.auto_tries == 2 and not a.warnings
    assert b.edit_scores["z"]["adapter_scale"] == 0.0 and b.edit_scores["z"]["auto_reason"] == "none-landed"
    assert "no candidate scale landed it" in b.warnings[0] and "'z'" in b.warnings[0]

    # an item that fails at a later scale ends as that failure; the others are unaffected
    engine = ScaleStamp()
    broken, fine = edit_items_auto(engine, [ItemRequest(photo, "broken", [("x", "needs=0.0")]),
                                            ItemRequest(photo, "c", [("x", "needs=1.0")])], preset)
    assert isinstance(broken, RuntimeError) and fine.edit_scores["x"]["adapter_scale"] == 1.0


class ColourStamp(ScaleStamp):
    """Edits made at scale >= 0.4 come out blue, weaker ones teal (what was asked): the judge explains an image
    best by the colour it shows, and an edit to blue fits "teal" better than the photo's red (neighbours)."""

    def prompt_errors(self, images, prompts):
        out = []
        for im, p in zip(images, prompts):
            level = np.asarray(im)[0, 0, 0]
            shows = "red" if level == 0 else ("blue" if (level - 1) / 200 >= 0.4 else "teal")
            out.append(1.0 if shows in p else 2.0 if shows == "blue" and "teal" in p else np.e)
        return out


def test_a_rival_answer_turns_a_neighbouring_colour_into_a_miss():
    photo = Image.new("RGB", (8, 8), (0, 0, 0))
    requests = [ItemRequest(photo, "a red mug", [("c", "a teal mug")])]
    preset = Preset(name="t", auto_scales=[1.0, 0.4, 0.0], auto_min_kept_db=0.0, auto_min_landed=0.1)
    # against the source prompt alone the blue edit "fits teal better than red": kept at the strongest scale
    alone = edit_items_auto(ColourStamp(), requests, dataclasses.replace(preset, auto_max_rivals=0))[0]
    assert alone.edit_scores["c"]["adapter_scale"] == 1.0 and alone.edit_scores["c"]["auto_rivals"] == 0
    # the run also asks for blue (another item's edit): blue explains the strong edits best, the search goes on
    engine = ColourStamp()
    out = edit_items_auto(engine, requests, preset, rivals=rival_phrases(run_vocabulary([("a red box", "a blue box")])))[0]
    assert out.edit_scores["c"]["adapter_scale"] == 0.0 and out.edit_scores["c"]["auto_reason"] == "landed"
    tried = json.loads(out.edit_scores["c"]["auto_candidates"])
    assert [(c["scale"], c["seen"]) for c in tried] == [(1.0, "a blue mug"), (0.4, "a blue mug"), (0.0, "a red mug")]
    assert tried[0]["landed"] < 0 < 0.1 <= tried[2]["landed"] and out.edit_scores["c"]["auto_rivals"] == 1
    # the preset's own rivals count too, and without the run's (rivals taken from the requests: none here)
    named = edit_items_auto(ColourStamp(), requests, dataclasses.replace(preset, auto_rivals=("blue",)))[0]
    assert named.edit_scores["c"]["adapter_scale"] == 0.0


def test_an_engine_without_a_judge_is_refused_with_the_reason():
    class NoJudge(ScaleStamp):
        prompt_errors = None

    photo = Image.new("RGB", (8, 8))
    with pytest.raises(InputError, match="needs a diffusion model or a CLIP model"):
        edit_items_auto(NoJudge(), [ItemRequest(photo, "a", [("x", "needs=1")])], Preset(name="t", auto_scales=[1.0]))


def test_the_zero_shot_judge_on_the_tiny_model(engine, photo):
    small = photo.resize((96, 64))
    other = photo.resize((96, 64)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    together = engine.prompt_errors([small, small, other], ["a cup of coffee", "a red car", "a blue cup"])
    alone = engine.prompt_errors([other], ["a blue cup"])
    assert all(np.isfinite(together)) and all(e > 0 for e in together) and together[0] != together[1]
    assert abs(alone[0] - together[2]) < 1e-5 * alone[0]  # fixed noises and timesteps: no dependence on the batch
    assert engine.prompt_errors([small], ["a cup of coffee"])[0] == pytest.approx(together[0], rel=1e-5)
