"""Region-true edits (method/region.py): outside a given mask the output is the photo's own pixels, byte for byte,
at the photo's own size — through the engine, `edit` and `run`, on photos of odd sizes and kinds."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from tight_pipeline.data import storage
from tight_pipeline.method import region
from tight_pipeline.method.items import ItemRequest
from tight_pipeline.method.presets import Preset, load_preset


# -- the composite, by hand ---------------------------------------------------------------------------------------
def _rng_photo(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_outside_the_region_every_byte_is_the_photo_s_and_the_band_lies_inside_it():
    photo = _rng_photo(300, 451, 4)  # RGBA: alpha is the photo's everywhere
    edit = _rng_photo(48, 80, seed=1)
    recon = _rng_photo(48, 80, seed=2)
    mask = np.zeros((300, 451), bool)
    mask[60:240, 100:350] = True
    for fill in ("edit", "detail"):
        out = region.composite(photo, edit, recon, mask, fill)
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert np.array_equal(out[~mask], photo[~mask])
        assert np.array_equal(out[..., 3], photo[..., 3])
        band = region.band_px(451, 300)
        assert band == 4  # max(4 px, 1 % of 300 px)
        deep = np.zeros_like(mask)
        deep[60 + band + 1 : 240 - band - 1, 100 + band + 1 : 350 - band - 1] = True
        expected = np.asarray(Image.fromarray(edit).resize((451, 300), Image.Resampling.LANCZOS), np.float64)
        if fill == "detail":
            expected = photo[..., :3] + expected - np.asarray(
                Image.fromarray(recon).resize((451, 300), Image.Resampling.LANCZOS), np.float64)
        want = np.clip(np.round(expected), 0, 255).astype(np.uint8)
        assert np.array_equal(out[..., :3][deep], want[deep])  # beyond the band: the fill itself
    assert region.band_px(4000, 3000) == 30


def test_detail_fill_keeps_the_photo_s_own_detail_under_a_colour_change():
    """A printed label (fine stripes) the working size cannot hold: the ``edit`` fill loses it, ``detail`` keeps it
    and still carries the new colour."""
    photo = np.full((256, 256, 3), 200, np.uint8)
    photo[100:160, 100:160:2] = 20  # 1-px stripes: gone at 64 px
    recon = np.asarray(Image.fromarray(photo).resize((64, 64), Image.Resampling.LANCZOS))
    edit = np.clip(recon.astype(int) + np.array([-60, 0, 40]), 0, 255).astype(np.uint8)  # a recolour
    mask = np.ones((256, 256), bool)
    inner = (slice(100, 160), slice(100, 160))
    detail = region.composite(photo, edit, recon, mask, "detail").astype(int)
    plain = region.composite(photo, edit, recon, mask, "edit").astype(int)
    stripes = lambda img: np.abs(np.diff(img[inner][..., 1], axis=1)).mean()  # noqa: E731
    assert stripes(detail) > 0.8 * stripes(photo.astype(int)) and stripes(plain) < 0.3 * stripes(photo.astype(int))
    assert detail[inner][..., 0].mean() < photo[inner][..., 0].mean() - 35  # the colour moved as the edit did (clipped at 0)
    assert region.structure_correlation(edit, recon, np.ones((64, 64), bool)) > region.DETAIL_MIN_CORRELATION
    redrawn = _rng_photo(64, 64, seed=3)
    assert region.structure_correlation(redrawn, recon, np.ones((64, 64), bool)) < region.DETAIL_MIN_CORRELATION


def _recolour_case(colour: str, logo: bool = True):
    """A 256-px demo shot with a near-white emblem and working-size (64 px) stand-ins for the model: the shot
    itself as the reconstruction, the same shot in ``colour`` as the edit."""
    from tight_pipeline.demo_model.products import ProductSpec, render_product

    spec = dataclasses.replace(ProductSpec.sample(10_007, 2001), colour="red", pattern="plain", logo=logo)
    shot, target = render_product(spec, 256), render_product(dataclasses.replace(spec, colour=colour), 256)
    small = lambda im: np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BOX))  # noqa: E731
    return (np.asarray(shot.image.convert("RGB")), small(shot.image), small(target.image), shot.mask,
            np.asarray(target.image.convert("RGB")).astype(float))


def test_recolour_fill_keeps_a_white_label_white_where_detail_tints_it():
    photo, recon, edit, mask, target = _recolour_case("blue")
    label = mask & (photo.min(-1) > 225)  # the printed near-white emblem
    assert label.sum() > 50
    detail, used_detail = region.composite_fill(photo, edit, recon, mask, "detail")
    recoloured, used = region.composite_fill(photo, edit, recon, mask, "recolour")
    assert (used_detail, used) == ("detail", "recolour")
    change = lambda out: np.abs(out[label].astype(float) - photo[label]).mean()  # noqa: E731
    assert change(recoloured) <= 2.0 < 8.0 < change(detail)
    # the body took the new colour: nearer the true blue shot than the photo is, and no farther than detail's
    body = mask & ~ndimage_dilate(label) & (np.abs(photo - target).sum(-1) > 60)
    error = lambda out: np.abs(out[body].astype(float) - target[body]).mean()  # noqa: E731
    assert error(recoloured) < 0.15 * np.abs(photo[body] - target[body]).mean()
    assert error(recoloured) <= error(detail) + 1.0
    assert np.array_equal(recoloured[~mask], photo[~mask])  # outside the region: the photo's own bytes


def test_recolour_of_a_product_with_no_colour_falls_back_to_detail_and_says_so():
    photo = np.full((128, 128, 3), 236, np.uint8)
    photo[40:90, 40:90] = 250  # a white product on a light backdrop: no body colour to map
    recon = np.asarray(Image.fromarray(photo).resize((32, 32), Image.Resampling.BOX))
    edit = np.clip(recon.astype(int) + np.array([0, -80, -80]), 0, 255).astype(np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[40:90, 40:90] = True
    out, used = region.composite_fill(photo, edit, recon, mask, "recolour")
    assert used == "detail"
    assert np.array_equal(out, region.composite(photo, edit, recon, mask, "detail"))
    weights, body = region.body_weights(photo[mask].astype(float))
    assert body is None and not weights.any()


def ndimage_dilate(mask, iterations=2):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)


def test_a_mask_must_have_the_photo_s_size_and_white_means_may_change():
    mask = Image.new("L", (40, 30), 0)
    mask.paste(255, (10, 5, 20, 15))
    got = storage.mask_from_image(mask, (40, 30))
    assert got.sum() == 100 and got[5, 10] and not got[0, 0]
    with pytest.raises(storage.ImageDecodeError, match="mask is 40x30, the photo is 30x40"):
        storage.mask_from_image(mask, (30, 40))
    with pytest.raises(region.RegionError, match="needs a mask"):
        region.EditRegion("mask")
    with pytest.raises(region.RegionError, match="not one of"):
        region.EditRegion("everywhere")


def test_automatic_region_follows_where_the_edit_changed_and_snaps_to_the_photo_s_edges():
    photo = np.full((200, 200, 3), 230, np.uint8)
    photo[60:140, 50:130] = (200, 40, 40)  # the product
    recon = np.asarray(Image.fromarray(photo).resize((50, 50), Image.Resampling.LANCZOS))
    edit = recon.copy()
    edit[15:35, 12:33] = (40, 60, 200)  # recoloured at the working size
    mask = region.auto_mask(edit, recon, photo)
    truth = np.zeros((200, 200), bool)
    truth[60:140, 50:130] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    assert not region.auto_mask(recon, recon, photo).any()  # nothing changed: an empty region


# -- the engine: every method, batched == alone -----------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.specs import resolve_model_spec

    return load_engine(resolve_model_spec("catalog-demo"))


@pytest.fixture(scope="module")
def shots():
    from tight_pipeline.demo_model.products import ProductSpec, render_product

    return [render_product(ProductSpec.sample(5, i), size=s) for i, s in ((0, 160), (1, 200), (2, 160))]


@pytest.mark.parametrize("method", ["ddim", "renoise", "ddpm_ef"])
def test_given_mask_keeps_the_photo_outside_and_blending_keeps_the_inversion_s_latent(demo, shots, method):
    import torch

    from tight_pipeline.method import conditioning, editing, inversion

    shot = shots[0]
    preset = Preset(name="t", method=method, steps=6, inversion_scale=1.0, edit_scale=1.0,
                    renoise_iterations=2 if method == "renoise" else 0, region_blend_start=0.0)
    edit = [("c", shot.caption.replace(shot.spec.colour, "blue", 1))]
    out = demo.edit_items([ItemRequest(shot.image, shot.caption, edit,
                                       regions={"c": region.EditRegion("mask", shot.mask)})], preset)[0]
    photo = np.asarray(shot.image)
    assert out.full_edits["c"].shape == photo.shape
    assert np.array_equal(out.full_edits["c"][~shot.mask], photo[~shot.mask])
    scores = out.edit_scores["c"]
    assert scores["region_source"] == "given" and scores["psnr_outside_region"] == 100.0
    assert scores["region_fraction"] == pytest.approx(shot.mask.mean())
    assert scores["psnr_inside_region"] < 40  # and inside, the edit changed the product
    # while denoising, the edit's latent outside the mask is the inversion's own at every level: at the end, z_0
    pipe, fitted = demo.pipe, demo.prepare_image(shot.image)
    z0 = demo.encode(fitted)
    text = conditioning.embed_text(pipe, [shot.caption, "", edit[0][1]], fitted.height, fitted.width)
    image = conditioning.embed_image(pipe, fitted)
    conditioning.set_adapter_scale(pipe, 1.0)
    schedule = inversion.make_schedule(pipe.scheduler, preset.steps)
    trajectory: dict = {}
    z_T, noises = demo.invert(z0, text.rows([0]), image.positive, schedule, preset, trajectory=trajectory)
    assert sorted(trajectory) == sorted(schedule.timesteps)
    mask = (region.latent_mask(shot.mask, *z0.shape[-2:]) > 0.999).float()
    for blend in (region.Blend(mask, [0], trajectory, z0, lambda i: schedule.timesteps[i] - schedule.step_ratio), None):
        z = editing.denoise(pipe, z_T, schedule, text.rows([1, 2]), torch.cat([image.negative, image.positive]), 0, 1,
                            7.5, noises=noises, blend=blend)
        outside = (mask == 0).expand_as(z)
        if blend is not None:
            assert torch.equal(z[outside], z0[outside])
            assert (z - z0).abs()[~outside].max() > 0.1  # inside, the edit moved
        else:
            assert (z - z0).abs()[outside].max() > 1e-3  # without blending it drifts outside too


def test_regions_batched_equal_one_item_runs(demo, shots):
    preset = dataclasses.replace(load_preset("catalog-draft"), steps=6, region="auto")
    requests = [ItemRequest(s.image, s.caption, [("c", s.caption.replace(s.spec.colour, "blue", 1)),
                                                  ("b", s.caption.replace(s.spec.background, "mint", 1))],
                            regions={"b": region.EditRegion("mask", ~s.mask)}) for s in shots]
    batched = demo.edit_items(requests, preset)
    for request, together in zip(requests, batched):
        alone = demo.edit_items([request], preset)[0]
        for edit_id in ("c", "b"):
            a, b = together.full_edits[edit_id].astype(int), alone.full_edits[edit_id].astype(int)
            assert a.shape == b.shape == np.asarray(request.image).shape
            assert np.abs(a - b).max() <= 2
            assert together.edit_scores[edit_id]["region_source"] == ("auto" if edit_id == "c" else "given")
        assert np.array_equal(together.full_edits["b"][request.regions["b"].mask == 0],
                              np.asarray(request.image)[request.regions["b"].mask == 0])


def test_automatic_strength_keeps_the_chosen_scale_s_region_output(demo, shots):
    from tight_pipeline.method.auto import strength

    shot = shots[1]
    preset = dataclasses.replace(load_preset("catalog-draft"), steps=5).with_auto((1.0, 0.0))
    mask = shot.mask
    result = strength.run_items(demo, [ItemRequest(shot.image, shot.caption,
                                                   [("c", shot.caption.replace(shot.spec.colour, "blue", 1))],
                                                   regions={"c": region.EditRegion("mask", mask)})], preset)[0]
    assert result.full_edits["c"].shape == np.asarray(shot.image).shape
    assert np.array_equal(result.full_edits["c"][~mask], np.asarray(shot.image)[~mask])
    assert result.edit_scores["c"]["region_source"] == "given" and "adapter_scale" in result.edit_scores["c"]


def test_flux_rf_inversion_with_a_given_mask(tmp_path_factory):
    from tight_pipeline.demo_model.products import ProductSpec, render_product
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.testing.tiny_models import make_tiny_flux_model

    engine = load_engine(resolve_model_spec(str(make_tiny_flux_model(tmp_path_factory.mktemp("m") / "flux")),
                                            device="cpu"))
    shot = render_product(ProductSpec.sample(3, 1), size=96)
    preset = Preset(name="t", method="rf_inversion", steps=4, inversion_scale=0.4, edit_scale=0.4, guidance=2.0,
                    region_blend_start=0.0)
    request = ItemRequest(shot.image, "a mug", [("b", "a blue mug")], regions={"b": region.EditRegion("mask", shot.mask)})
    out = engine.edit_items([request], preset)[0]
    assert out.full_edits["b"].shape == (96, 96, 3)
    assert np.array_equal(out.full_edits["b"][~shot.mask], np.asarray(shot.image)[~shot.mask])
    assert out.full_reconstruction.shape == (96, 96, 3)


# -- photos of odd sizes and kinds, through `edit` and `run` ------------------------------------------------------
def _odd_photos(folder):
    """(name, photo bytes, upright (w, h), mask bytes): 451x300, an EXIF-rotated JPEG, a 16-bit PNG, RGBA, 4:1."""
    from skimage import data

    base = Image.fromarray(data.astronaut())
    out = []

    def png(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    def mask_for(size):
        m = Image.new("L", size, 0)
        m.paste(255, (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
        return png(m)

    out.append(("odd", png(base.resize((451, 300))), (451, 300)))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    base.resize((300, 200)).save(rotated, format="JPEG", quality=90, exif=exif)
    out.append(("rotated", rotated.getvalue(), (200, 300)))
    gray16 = (np.asarray(base.convert("L").resize((320, 240)), np.uint16) * 257).astype(np.uint16)
    out.append(("deep", png(Image.fromarray(gray16)), (320, 240)))
    rgba = base.resize((300, 300)).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (300, 1))
    rgba.putalpha(Image.fromarray(alpha))
    out.append(("alpha", png(rgba), (300, 300)))
    out.append(("panorama", png(base.resize((800, 200))), (800, 200)))
    files = []
    for name, data_, size in out:
        ext = "jpg" if name == "rotated" else "png"
        (folder / f"{name}.{ext}").write_bytes(data_)
        (folder / f"{name}-mask.png").write_bytes(mask_for(size))
        files.append((name, folder / f"{name}.{ext}", size, folder / f"{name}-mask.png"))
    return files


def _check_output(path, photo_path, size, mask_path, changed=True):
    """The output has the photo's upright size; outside the mask its pixels are the photo's own, byte for byte."""
    out = np.asarray(Image.open(path))
    photo = storage.decode_photo(photo_path.read_bytes())
    mask = storage.decode_mask(mask_path.read_bytes(), size)
    assert (out.shape[1], out.shape[0]) == size, path
    assert out.shape[-1] == photo.pixels.shape[-1]  # RGBA stays RGBA
    assert np.array_equal(out[~mask], photo.pixels[~mask]), path
    if changed:  # the edit did change the region (the random tiny model's edits may round back to the photo)
        assert not np.array_equal(out[mask], photo.pixels[mask]), path


def test_edit_with_a_mask_on_odd_photos(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    for name, photo, size, mask in _odd_photos(tmp_path):
        result = CliRunner().invoke(app, ["edit", str(photo), "--source-prompt", "a woman in a space suit",
                                          "--edit", "a woman in a red space suit", "--preset", "smoke",
                                          "--mask", str(mask), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        _check_output(tmp_path / name / "edit_01.png", photo, size, mask)
        assert Image.open(tmp_path / name / "reconstruction.png").size == size
        report = json.loads((tmp_path / name / "scores.json").read_text())
        assert report["edits"]["edit_01"]["region_source"] == "given"
    wrong = CliRunner().invoke(app, ["edit", str(tmp_path / "odd.png"), "--source-prompt", "a", "--edit", "b",
                                     "--mask", str(tmp_path / "panorama-mask.png"), "--out", str(tmp_path / "x")])
    assert wrong.exit_code != 0 and "the photo is 451x300" in wrong.output


@pytest.mark.drill  # end to end through Ray (and Prefect): make drills (make test stays under 7 minutes)
def test_run_with_masks_on_odd_photos(tmp_path, tiny_model_dir, ray_session):
    from tight_pipeline.data import scores
    from tight_pipeline.pipeline.config import JobConfig
    from tight_pipeline.pipeline.job import run_job

    files = _odd_photos(tmp_path)
    lines = [{"item_id": name, "image_uri": photo.name, "source_prompt": "a woman", "mask_uri": mask.name,
              "edits": [{"edit_id": "red", "prompt": "a woman in red"},
                        {"edit_id": "free", "prompt": "a woman in blue", "region": "whole"}]}
             for name, photo, size, mask in files]
    lines.append({"item_id": "wrong-mask", "image_uri": "odd.png", "source_prompt": "a", "mask_uri": "panorama-mask.png",
                  "edits": [{"edit_id": "red", "prompt": "b"}]})
    lines.append({"item_id": "no-mask", "image_uri": "odd.png", "source_prompt": "a",
                  "edits": [{"edit_id": "red", "prompt": "b", "region": "mask"}]})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "out"
    run_job(JobConfig(manifest=str(manifest), output=str(out), preset="smoke", model=str(tiny_model_dir)))
    rows = scores.read_latest(str(out)).set_index(["item_id", "edit_id"])
    for name, photo, size, mask in files:
        row = rows.loc[(name, "red")]
        assert row["status"] == "ok", row["error"]
        assert (row["output_width"], row["output_height"]) == size and row["region_source"] == "given"
        _check_output(row["edit_uri"], photo, size, mask, changed=False)
        assert Image.open(row["reconstruction_uri"]).size == size
        assert np.asarray(Image.open(row["region_uri"])).astype(bool).sum() == storage.decode_mask(mask.read_bytes(), size).sum()
        free = rows.loc[(name, "free")]
        assert free["region_source"] == "whole" and Image.open(free["edit_uri"]).size == size
    bad = rows.loc[("wrong-mask", "red")]
    assert bad["status"] == "error" and "'wrong-mask'" in bad["error"] and "the photo is 451x300" in bad["error"]
    invalid = rows.loc[("no-mask", slice(None))] if ("no-mask", "red") not in rows.index else rows.loc[("no-mask", "red")]
    assert "neither it nor the item has a mask_uri" in str(invalid["error"].iloc[0] if hasattr(invalid["error"], "iloc")
                                                          else invalid["error"])


def test_automatic_region_on_a_studio_shot_is_the_product_or_the_backdrop():
    """On a plain backdrop the automatic region is one of the photo's two parts: a background swap that also
    repainted part of the product leaves the whole product as it was; a recolour leaves the whole backdrop."""
    from skimage import data

    from tight_pipeline.demo_model.products import ProductSpec, iou, render_product

    shot = render_product(ProductSpec.sample(10_007, 3), 256)
    photo = np.asarray(shot.image)
    product = region.studio_product(photo)
    assert product is not None and iou(product, shot.mask) > 0.75
    assert region.studio_product(np.asarray(data.coffee())) is None  # no plain backdrop: the guided-filter path
    small = np.asarray(shot.image.resize((64, 64), Image.Resampling.BOX)).astype(np.int16)
    inside = np.asarray(Image.fromarray(shot.mask.astype(np.uint8) * 255).resize((64, 64))) >= 128
    swap = small.copy()
    swap[~inside] = (swap[~inside] + [60, -40, 30]).clip(0, 255)  # a new backdrop ...
    swap[:20][inside[:20]] = (swap[:20][inside[:20]] + 50).clip(0, 255)  # ... and the product's top repainted
    region_bg = region.auto_mask(swap.astype(np.uint8), small.astype(np.uint8), photo)
    with_shadow, shadow = region.studio_parts(photo)
    assert (with_shadow == product).all() and shadow.any() and not (shadow & shot.mask).any()
    assert (region_bg == (~product | shadow)).all()  # the backdrop and the contact shadow, never the product
    recolour = small.copy()
    recolour[inside] = (recolour[inside] + [-80, 60, 60]).clip(0, 255)
    region_fg = region.auto_mask(recolour.astype(np.uint8), small.astype(np.uint8), photo)
    assert region_fg.any() and not (region_fg & ~product).any()  # never the backdrop
    assert iou(region_fg, shot.mask) > 0.8


# -- the default region follows the photo (studio) -------------------------------------------------------------
def test_the_shipped_default_is_studio_and_on_a_photo_without_a_plain_backdrop_it_is_whole_byte_for_byte():
    from skimage import data

    from tight_pipeline.method.presets import Preset, load_preset

    assert Preset("x").region == "studio" and load_preset("catalog-cfgpp").region == "studio"
    assert load_preset("catalog-cfgpp").hash != dataclasses.replace(load_preset("catalog-cfgpp"), region="whole").hash
    photo = np.asarray(Image.fromarray(data.coffee()).resize((200, 150)))
    assert region.studio_product(photo) is None
    rng = np.random.default_rng(0)
    recon = np.asarray(Image.fromarray(photo).resize((64, 48), Image.Resampling.BOX))
    edit = np.clip(recon.astype(int) + rng.integers(-40, 40, recon.shape), 0, 255).astype(np.uint8)
    out, fields, mask = region.finish(photo, edit, recon, region.EditRegion("studio"))
    whole, whole_fields, _ = region.finish(photo, edit, recon, region.EditRegion("whole"))
    assert np.array_equal(out, whole) and mask.all()
    assert fields == whole_fields and fields["region_source"] == "whole"


def test_on_a_studio_shot_the_default_recolours_the_product_keeping_its_label_and_keeps_the_backdrop():
    photo, recon, edit, mask, _ = _recolour_case("blue")
    out, fields, region_mask = region.finish(photo, edit, recon, region.EditRegion("studio"))
    assert fields["region_source"] == "auto" and fields["region_fill"] == "recolour"
    assert not (region_mask & ~ndimage_dilate(mask, 3)).any()  # the product, never the backdrop
    assert np.array_equal(out[~region_mask], photo[~region_mask])
    label = mask & (photo.min(-1) > 225)
    assert np.abs(out[label].astype(float) - photo[label]).mean() <= 2.0
    # the same edit on a given mask keeps the detail fill (a given region need not be a product)
    _, given, _ = region.finish(photo, edit, recon, region.EditRegion("mask", mask))
    assert given["region_fill"] == "detail"


def test_the_default_through_the_engine_records_which_region_each_photo_got(demo):
    from skimage import data

    from tight_pipeline.demo_model.products import ProductSpec, caption, render_product
    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.presets import load_preset

    preset = dataclasses.replace(load_preset("catalog-cfgpp"), steps=6)
    spec = dataclasses.replace(ProductSpec.sample(10_007, 2002), logo=True)
    shot = render_product(spec, 256)
    other = Image.fromarray(data.coffee()).resize((200, 150))
    edits = [("colour", caption(spec.kind, "blue" if spec.colour != "blue" else "red", spec.pattern,
                                spec.background))]
    studio, plain = demo.edit_items([ItemRequest(shot.image, shot.caption, edits),
                                     ItemRequest(other, "a photo", [("colour", "a red photo")])], preset)
    assert studio.edit_scores["colour"]["region_source"] == "auto"
    assert plain.edit_scores["colour"]["region_source"] == "whole"
    whole = region.finish(np.asarray(other), np.asarray(plain.edits["colour"].convert("RGB")),
                          np.asarray(plain.reconstruction.convert("RGB")), region.EditRegion("whole"))[0]
    assert np.array_equal(plain.full_edits["colour"], whole)
