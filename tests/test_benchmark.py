"""The edit benchmark: PIE-Bench's format, its metrics against hand-made cases and torchmetrics, LEDITS++ as a peer,
and a slice of the whole benchmark through the job."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tight_pipeline.data import piebench
from tight_pipeline.reporting import benchmark


# -- the format ---------------------------------------------------------------------------------------------------
def test_rle_decodes_runs_row_major_cut_at_the_end_with_the_frame_marked():
    mask = piebench.rle_decode([6, 3, 18, 5], (4, 5))  # runs 6..8 and 18..22, cut at 20 pixels
    expected = np.zeros(20, bool)
    expected[[6, 7, 8, 18, 19]] = True
    expected = expected.reshape(4, 5)
    expected[0, :] = expected[-1, :] = expected[:, 0] = expected[:, -1] = True  # the authors' frame
    assert (mask == expected).all()
    with pytest.raises(ValueError, match="odd number"):
        piebench.rle_decode([1, 2, 3], (4, 5))


def test_rle_encode_is_the_inverse_inside_the_frame():
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40), bool)
    mask[1:-1, 1:-1] = rng.random((28, 38)) < 0.3
    counts = piebench.rle_encode(mask)
    assert counts[:2] == [int(np.flatnonzero(mask.ravel())[0]), counts[1]]
    decoded = piebench.rle_decode(counts, mask.shape)
    assert (decoded[1:-1, 1:-1] == mask[1:-1, 1:-1]).all() and decoded[0].all() and decoded[:, -1].all()


def _pie_fixture(root, size=(24, 16)):
    """A folder written by hand in PIE-Bench's layout (two categories, bracketed prompts, RLE masks)."""
    images = root / "annotation_images"
    for sub in ("6_change_attribute_color_40/1_artificial", "8_change_background_80/2_natural"):
        (images / sub).mkdir(parents=True)
    Image.new("RGB", size, (200, 30, 30)).save(images / "6_change_attribute_color_40/1_artificial/611000000001.jpg")
    Image.new("RGB", size, (30, 200, 30)).save(images / "8_change_background_80/2_natural/811000000002.jpg")
    mapping = {
        "811000000002": {"image_path": "8_change_background_80/2_natural/811000000002.jpg",
                         "original_prompt": "a cat on [grass]", "editing_prompt": "a cat on [snow]",
                         "editing_instruction": "make it snow", "editing_type_id": "8", "blended_word": "grass snow",
                         "mask": [0, 24 * 8]},
        "611000000001": {"image_path": "6_change_attribute_color_40/1_artificial/611000000001.jpg",
                         "original_prompt": "a [red] car", "editing_prompt": "a [blue] car",
                         "editing_instruction": "make the car blue", "editing_type_id": "6",
                         "blended_word": "car car", "mask": [24 * 5 + 3, 10, 24 * 6 + 3, 10]},
    }
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    return root


def test_reads_the_pie_bench_layout(tmp_path):
    bench = piebench.read_bench(_pie_fixture(tmp_path))
    first, second = bench.cases  # key order
    assert (first.key, first.source_prompt, first.target_prompt, first.edit_type) == \
        ("611000000001", "a red car", "a blue car", "change_attribute_color")
    assert piebench.bracketed(first.editing_prompt) == ["blue"]
    mask = first.mask((24, 16))
    assert mask.shape == (16, 24) and mask[5, 3:13].all() and mask[6, 3:13].all() and not mask[5, 13]
    assert int(mask[1:-1, 1:-1].sum()) == 20
    assert second.mask((24, 16))[:8].all() and not second.mask((24, 16))[8:-1, 1:-1].any()
    assert bench.image_file(second).exists()
    assert [c.key for c in piebench.read_bench(tmp_path, types=["8"]).cases] == ["811000000002"]
    assert len(piebench.read_bench(tmp_path, limit=1).cases) == 1


def test_a_broken_pie_folder_is_named(tmp_path):
    with pytest.raises(piebench.BenchError, match="not a PIE-Bench folder: mapping_file.json not found"):
        piebench.read_bench(tmp_path)
    root = _pie_fixture(tmp_path)
    raw = json.loads((root / "mapping_file.json").read_text())
    raw["611000000001"]["image_path"] = "6_change_attribute_color_40/gone.jpg"
    del raw["811000000002"]["mask"]
    (root / "mapping_file.json").write_text(json.dumps(raw))
    with pytest.raises(piebench.BenchError, match="case 611000000001: image annotation_images/6_change_attribute_color_40/gone.jpg not found"):
        piebench.read_bench(root, types=["6"])
    with pytest.raises(piebench.BenchError, match="case 811000000002: missing mask"):
        piebench.read_bench(root, types=["8"])


def test_a_manifest_with_masks_is_a_benchmark_too(tmp_path):
    """A catalog's own photos: one case per (item, edit), the edit's mask or the item's, the type from metadata."""
    from flows.edit_benchmark import load_cases

    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "p.png")
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(255 - mask).save(tmp_path / "bg.png")
    lines = [{"item_id": "mug", "image_uri": "p.png", "source_prompt": "a mug", "mask_uri": "m.png",
              "metadata": {"edit_type": "colour"},
              "edits": [{"edit_id": "blue", "prompt": "a blue mug"},
                        {"edit_id": "beach", "prompt": "a mug on a beach", "mask_uri": "bg.png"}]}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    cases = load_cases(str(tmp_path / "m.jsonl"))
    assert [(c.key, c.source_prompt, c.target_prompt, c.edit_type) for c in cases] == \
        [("mug.blue", "a mug", "a blue mug", "colour"), ("mug.beach", "a mug", "a mug on a beach", "colour")]
    assert cases[0].mask((40, 30)).sum() == 200 and cases[1].mask((40, 30)).sum() == 40 * 30 - 200
    assert load_cases(str(tmp_path / "m.jsonl"), types=["colour"], limit=1)[0].key == "mug.blue"
    del lines[0]["mask_uri"]
    (tmp_path / "m.jsonl").write_text(json.dumps(lines[0]))
    with pytest.raises(piebench.BenchError, match="case mug.blue: no mask_uri on the edit or the item"):
        load_cases(str(tmp_path / "m.jsonl"))


def test_the_demo_set_is_written_in_pie_format_with_true_masks(tmp_path):
    from tight_pipeline.demo import BENCH_TYPES, write_demo_bench

    write_demo_bench(str(tmp_path), shots=2, size=64)
    bench = piebench.read_bench(tmp_path)
    assert len(bench.cases) == 2 * len(BENCH_TYPES)
    assert {c.editing_type_id for c in bench.cases} == set(BENCH_TYPES)
    for case in bench.cases:
        assert piebench.bracketed(case.editing_prompt), case  # a source may have none: "a mug" -> "a [striped] mug"
        assert "[" not in case.source_prompt and case.source_prompt != case.target_prompt
        image = Image.open(bench.image_file(case))
        area = case.mask(image.size)[1:-1, 1:-1].mean()
        assert (area > 0.5) if case.editing_type_id == "8" else (0.02 < area < 0.5), (case.key, area)


# -- the metrics ----------------------------------------------------------------------------------------------------
def test_masked_metrics_are_the_references_by_hand():
    a = np.zeros((10, 10, 3), np.uint8)
    b = a.copy()
    b[:5, :5] = 51  # 0.2 in [0, 1] on a quarter of the image
    keep = np.zeros((10, 10), bool)
    keep[:5] = True  # half the image, holding the whole difference
    # masked by multiplication: mean over every value = 0.2² × 25 px / 100 px = 0.01
    assert benchmark.pie_mse(a, b) == pytest.approx(0.01)
    assert benchmark.pie_psnr(a, b) == pytest.approx(20.0)
    assert benchmark.pie_mse(a, b, keep) == pytest.approx(0.01)
    assert benchmark.pie_psnr(a, b, ~keep) == benchmark.PSNR_CAP  # nothing differs where kept: capped, not inf
    assert benchmark.pie_ssim(a, a, keep) == pytest.approx(1.0)
    assert benchmark.keys_self_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).flatten().tolist() == \
        pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(2), 1.0])


def test_psnr_mse_ssim_equal_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.image")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (37, 45, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    keep = np.ones((37, 45), bool)
    keep[8:25, 10:30] = False
    x = torch.from_numpy(a / 255.0).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b / 255.0).permute(2, 0, 1)[None].float()
    m = torch.from_numpy(keep.astype(np.float32))[None, None]
    assert benchmark.pie_ssim(a, b, keep) == pytest.approx(float(tm.structural_similarity_index_measure(x * m, y * m, data_range=1.0)), abs=1e-6)
    assert benchmark.pie_ssim(a, b) == pytest.approx(float(tm.structural_similarity_index_measure(x, y, data_range=1.0)), abs=1e-6)
    assert benchmark.pie_psnr(a, b, keep) == pytest.approx(float(tm.peak_signal_noise_ratio(x * m, y * m, data_range=1.0)), abs=1e-4)
    assert benchmark.pie_mse(a, b, keep) == pytest.approx(float(torch.mean((x * m - y * m) ** 2)), rel=1e-5)


def test_structure_distance_from_a_local_vit(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=224,
                       patch_size=32)
    model = ViTModel(config, add_pooling_layer=False)
    model.save_pretrained(tmp_path / "vit")
    dino = benchmark.DinoStructure(str(tmp_path / "vit"))
    assert dino.key is dict(dino.model.named_modules())["layers.1.attention.k_proj"]  # the last block's keys
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    b = a.copy()
    b[:32] = 255 - b[:32]
    assert dino.distance(a, a) == 0.0
    # by hand: 224 px, 0..255 ImageNet-normalised, the last block's keys, their cosine self-similarity, MSE
    def keys(img):
        x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        x = (x - torch.tensor(benchmark.IMAGENET_MEAN)[:, None, None]) / torch.tensor(benchmark.IMAGENET_STD)[:, None, None]
        hidden = dino.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]  # the last block's input
        k = dino.model.layers[-1].attention.k_proj(dino.model.layers[-1].layernorm_before(hidden))[0]
        return torch.nn.functional.normalize(k, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).T
    with torch.no_grad():
        expected = float(torch.mean((keys(a) - keys(b)) ** 2))
    assert dino.distance(a, b) == pytest.approx(expected, rel=1e-4) and expected > 0


def test_missing_metrics_are_named_in_scores_and_table():
    scorers = benchmark.Scorers.load(clip=None, dino=None, lpips=False)
    assert set(scorers.missing) == {"clip", "structure_distance", "lpips"}
    a = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    row = benchmark.score_case(a, a, mask, "a mug", scorers)
    assert row["structure_distance"] is None and row["clip_whole"] is None and row["psnr_unedited"] == 100.0
    rows = pd.DataFrame([{"peer": "p", "status": "ok", "seconds": 1.0, **row},
                         {"peer": "p", "status": "error", "seconds": None}])
    table = benchmark.summarize(rows, scorers.missing)
    rec = table.iloc[0]
    assert (rec["cases"], rec["errors"], rec["structure_distance"], rec["clip_whole"], rec["lpips_unedited"]) == \
        (2, 1, "missing", "missing", "missing")
    assert rec["psnr_unedited"] == 100.0 and rec["mse_unedited"] == 0.0
    assert "psnr_unedited ↑" in benchmark.markdown(table) and "structure_distance ×10^3 ↓" in benchmark.markdown(table)


def test_clip_columns_are_torchmetrics_clip_score():
    from tight_pipeline.method.metrics import ClipScorer
    from tight_pipeline.method.specs import resolve_model_spec

    clip = resolve_model_spec("catalog-demo-clip").clip
    scorers = benchmark.Scorers.load(clip=clip, lpips=False)
    from tight_pipeline.demo_model.products import ProductSpec, render_product

    shot = render_product(ProductSpec.sample(3, 0), 64)
    source = np.asarray(shot.image)
    row = benchmark.score_case(source, source, shot.mask, shot.caption, scorers)
    cut = (source * shot.mask[..., None]).astype(np.uint8)
    cos = ClipScorer(clip).score([shot.image, Image.fromarray(cut)], [shot.caption] * 2)
    assert row["clip_whole"] == pytest.approx(max(100 * cos[0], 0.0), abs=1e-3)
    assert row["clip_edited"] == pytest.approx(max(100 * cos[1], 0.0), abs=1e-3)


# -- LEDITS++ --------------------------------------------------------------------------------------------------------
def test_ledits_concepts_come_from_the_changed_words():
    from tight_pipeline.method.ledits import concepts

    assert concepts("a red striped mug", "a blue striped mug") == (["red", "blue"], [True, False])
    assert concepts("a mug", "a striped mug") == (["striped"], [False])
    assert concepts("a mug", "sunset photo") == (["sunset photo"], [False])


def test_ledits_is_refused_where_it_cannot_run():
    from tight_pipeline.method.items import InputError
    from tight_pipeline.method.ledits import check
    from tight_pipeline.method.presets import PresetError, load_preset
    from tight_pipeline.method.specs import ModelSpec

    with pytest.raises(PresetError, match="LEDITS"):
        load_preset("ledits-pp@auto")
    with pytest.raises(InputError, match="needs an SDXL model; this one is flux"):
        check(ModelSpec(name="f", base="none", family="flux"), load_preset("ledits-pp"))
    check(ModelSpec(name="s", base="none", family="sdxl"), load_preset("ledits-pp"))  # runs on SDXL


def test_ledits_runs_on_the_engines_weights_and_gives_them_back():
    from tight_pipeline.demo_model.products import ProductSpec, render_product
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.presets import load_preset
    from tight_pipeline.method.specs import resolve_model_spec

    torch.set_num_threads(2)
    engine = load_engine(resolve_model_spec("catalog-demo", device="cpu"))
    shot = render_product(ProductSpec.sample(5, 1), 96)
    edits = [("c", shot.caption.replace(shot.spec.colour, "teal" if shot.spec.colour != "teal" else "red", 1))]
    tight = load_preset("catalog-sharp")
    before = engine.edit_item(shot.image, shot.caption, edits, tight)
    peer = engine.edit_item(shot.image, shot.caption, edits, load_preset("catalog-ledits"))
    after = engine.edit_item(shot.image, shot.caption, edits, tight)
    assert np.array_equal(np.asarray(before.edits["c"]), np.asarray(after.edits["c"]))  # the adapter is back
    assert peer.full_edits["c"].shape == (96, 96, 3) and peer.timings.denoise_s > 0
    assert peer.scores["psnr_vs_vae"] > 20  # its own reconstruction (22.2 dB here; an unrelated image: ~10)
    assert not np.array_equal(np.asarray(peer.edits["c"]), np.asarray(before.edits["c"]))


# -- the benchmark through the job ------------------------------------------------------------------------------------
@pytest.mark.drill  # end to end through Ray (and Prefect): make drills (make test stays under 7 minutes)
def test_benchmark_slice_end_to_end(tmp_path, ray_session, prefect_harness):
    """Two edit types of the demo set, three peers (ours, its region-true output, LEDITS++) in one job: the table,
    plot, rows and the MLflow run, with the metrics that have no weights here named missing."""
    from flows.edit_benchmark import edit_benchmark
    from tight_pipeline.demo import write_demo_bench
    from tight_pipeline.reporting import tracking

    write_demo_bench(str(tmp_path / "data"), shots=1, size=128)
    out = tmp_path / "out"
    result = edit_benchmark(data=str(tmp_path / "data"), output=str(out), types=["6", "8"], lpips=False,
                            peers=["catalog-sharp", "catalog-sharp+mask", "catalog-ledits"], model="catalog-demo-clip")
    table = pd.read_csv(out / "benchmark" / "table.csv").set_index("peer")
    assert list(table.index) == ["catalog-sharp", "catalog-sharp+mask", "catalog-ledits"]
    assert (table["cases"] == 2).all() and (table["errors"] == 0).all() and (table["s_per_item"] > 0).all()
    assert (table["structure_distance"] == "missing").all() and (table["lpips_unedited"] == "missing").all()
    assert table.loc["catalog-sharp+mask", "psnr_unedited"] == 100.0  # the photo's own pixels outside the mask
    assert float(table.loc["catalog-sharp", "psnr_unedited"]) < 100.0
    assert pd.to_numeric(table["clip_whole"]).between(0, 100).all()  # the demo CLIP, given by the model's spec
    rows = pd.read_csv(out / "benchmark" / "rows.csv")
    assert len(rows) == 6 and set(rows["status"]) == {"ok"}
    assert (out / "benchmark" / "plot.png").stat().st_size > 10_000
    mlflow = tracking.connect()
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.params["peers"] == "catalog-sharp,catalog-sharp+mask,catalog-ledits"
    assert "missing.structure_distance" in run.data.tags
    assert run.data.metrics["catalog-sharp_mask.psnr_unedited"] == 100.0


def test_benchmark_says_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    for args, start in [
        (["benchmark", "--data", str(tmp_path), "--output", "o"],
         f"error: {tmp_path} is not a PIE-Bench folder: mapping_file.json not found"),
        (["benchmark", "--data", str(tmp_path), "--output", "o", "--peers", "balanced+crop"],
         "error: peer 'balanced+crop': the only suffix is '+mask'"),
        (["benchmark", "--data", str(tmp_path), "--output", "o", "--peers", "nope"], "error: unknown preset 'nope'"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and result.output.strip().splitlines()[-1].startswith(start), result.output


def test_a_case_that_cannot_be_scored_is_a_row_not_a_failed_run(tmp_path):
    from flows.edit_benchmark import BenchCase, score

    photo = np.zeros((48, 64, 3), np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(photo + 10).save(tmp_path / "edit.png")
    cases = [BenchCase("good", str(tmp_path / "p.png"), "a", "b", "edit", mask_uri=str(tmp_path / "ok.png")),
             BenchCase("bad", str(tmp_path / "p.png"), "a", "b", "edit", mask_uri=str(tmp_path / "small.png"))]
    rows = pd.DataFrame([{"item_id": f"{k}.p", "edit_id": "edit", "status": "ok", "error": None, "time_total_s": 1.0,
                          "edit_uri": str(tmp_path / "edit.png")} for k in ("good", "bad")])
    out = score.fn(cases, rows, [("p", "p", False)], benchmark.Scorers.load(lpips=False)).set_index("case")
    assert out.loc["good", "status"] == "ok" and out.loc["good", "psnr_whole"] == pytest.approx(10 * math.log10(255**2 / 100))
    assert out.loc["bad", "status"] == "score_error" and "case bad: cannot be scored" in out.loc["bad", "error"]
    assert "10x10" in out.loc["bad", "error"] or "size" in out.loc["bad", "error"]
