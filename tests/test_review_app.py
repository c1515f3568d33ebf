"""The review app's data (tight_pipeline/review/queue.py) and the app itself (Gradio, in a real browser: drill)."""

from __future__ import annotations

import hashlib
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from tight_pipeline.data import scores, storage
from tight_pipeline.review import decisions
from tight_pipeline.review.queue import PAGE, Queue

STRENGTHS = (0.2, 0.6, 1.0)


def _sweep(tmp_path, items=("a", "b", "c")):
    """An output as a strength sweep writes one: every item's edit at three strengths, its own PNG each."""
    out = str(tmp_path / "out")
    rows = []
    for n, item in enumerate(items):
        for k, s in enumerate(STRENGTHS):
            h = f"h{k}"
            uri = storage.output_key(out, h, item, "blue")
            pixels = np.random.default_rng(10 * n + k).integers(0, 255, (24, 24, 3), dtype=np.uint8)
            storage.write_bytes_atomic(uri, storage.encode_png(Image.fromarray(pixels)))
            rows.append({"item_id": item, "edit_id": "blue", "preset": f"balanced@{s}", "preset_hash": h,
                         "status": "ok", "edit_uri": uri, "image_uri": uri, "adapter_scale": s,
                         "edit_prompt": "a blue mug", "psnr_vs_input": 40.0 - 10 * s - n, "edit_change": s / 10,
                         "finished_at": f"2026-12-07T10:00:{n}{k}+00:00"})
    scores.write_part(out, "run1", rows)
    return out


def test_a_card_holds_every_rendered_strength_in_order_and_the_slider_snaps_to_the_nearest(tmp_path):
    q = Queue(_sweep(tmp_path))
    card = q.card("a", "blue")
    assert [o.strength for o in card.outputs] == list(STRENGTHS)
    assert card.nearest(0.7).preset == "balanced@0.6" and card.nearest(0.95).preset == "balanced@1.0"
    assert "keeps 38 dB of the photo outside the change" in card.outputs[0].words()


def test_the_undecided_queue_drops_an_edit_once_decided_and_worst_first_puts_the_least_kept_first(tmp_path):
    out = _sweep(tmp_path)
    q = Queue(out)
    assert q.keys("worst first") == [("c", "blue"), ("b", "blue"), ("a", "blue")]
    decisions.write(out, [decisions.Decision.about(q.row("b", "blue", "h1"), "approve", "ana")])
    q.reload()
    assert q.keys("undecided") == [("a", "blue"), ("c", "blue")]
    assert [o.state for o in q.card("b", "blue").outputs] == ["undecided", "approved", "undecided"]


def test_the_app_s_own_decision_applies_at_once_without_reading_the_output_again(tmp_path):
    out = _sweep(tmp_path)
    q = Queue(out)
    made = decisions.Decision.about(q.row("c", "blue", "h2"), "reject", "ana", note="smeared")
    decisions.write(out, [made])
    q.record(made)  # what the app does after each button (a reload reads everything: the same result)
    assert [o.state for o in q.card("c", "blue").outputs] == ["undecided", "undecided", "rejected"]
    assert q.keys("undecided") == [("a", "blue"), ("b", "blue")]
    recorded = q.row("c", "blue", "h2")
    q.reload()
    assert [o.state for o in q.card("c", "blue").outputs] == ["undecided", "undecided", "rejected"]
    assert (recorded["reviewer"], recorded["note"]) == (q.row("c", "blue", "h2")["reviewer"], "smeared")


def test_pages_hold_at_most_a_page_of_keys(tmp_path):
    out = str(tmp_path / "out")
    rows = [{"item_id": f"i{n:04d}", "edit_id": "e", "preset": "p", "preset_hash": "h", "status": "ok",
             "edit_uri": f"{out}/x/{n}.png", "image_uri": "x.png", "finished_at": "2026-12-07T10:00:00+00:00"}
            for n in range(PAGE * 2 + 3)]
    scores.write_part(out, "run1", rows)
    q = Queue(out)
    assert q.pages("all") == 3 and len(q.keys("all", 0)) == PAGE and len(q.keys("all", 2)) == 3


BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.drill
@pytest.mark.skipif(not (BROWSER and DRIVER), reason="needs chromium and chromedriver")
def test_the_whole_loop_in_a_browser_sweep_slider_decide_redo_publish(tmp_path, tiny_model_dir, prefect_env, ray_env,
                                                                       monkeypatch):
    """A run renders three photos at three strengths (one job); in the review app a reviewer moves the slider and
    sees that strength's PNG, approves it, rejects the next edit and asks a redo of the third; `redo` renders it;
    `publish` writes exactly the approved PNG and its list, and a second `publish` copies nothing."""
    import urllib.request

    import pyarrow.parquet as pq
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from typer.testing import CliRunner

    from flows.cli import app as cli
    from tight_pipeline.method.presets import load_preset
    from tight_pipeline.review.app import launch
    from tests.test_review import three_photos

    folder = three_photos(tmp_path, monkeypatch, {**prefect_env, **ray_env})
    out, shop = str(tmp_path / "out"), str(tmp_path / "shop")
    runner = CliRunner()
    ran = runner.invoke(cli, ["run", "--manifest", str(folder / "manifest.jsonl"), "--output", out, "--preset", "smoke",
                              "--model", str(tiny_model_dir), "--strengths", ",".join(map(str, STRENGTHS))])
    assert ran.exit_code == 0, ran.output[-3000:]
    low, high = load_preset("smoke@0.2").hash, load_preset("smoke@1.0").hash
    rendered = scores.read_latest(out)
    assert len(rendered) == 9 and (rendered["checks_profile"] == "basic").all()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    review, url = launch(out, port=port)
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        shown = lambda: driver.find_element(By.ID, "shown").text  # noqa: E731
        wait.until(lambda d: high in shown())  # the highest rendered strength first
        rng = driver.find_element(By.CSS_SELECTOR, "#strength input[type=range]")
        rng.send_keys(Keys.HOME)  # a reviewer drags the slider to the lowest strength
        wait.until(lambda d: low in shown())
        assert "smoke@0.2" in driver.find_element(By.ID, "info").text
        imgs = [i.get_attribute("src") for i in driver.find_elements(By.CSS_SELECTOR, "#pair img")]
        want = hashlib.sha256(storage.read_bytes(storage.output_key(out, low, "p0", "blue"))).hexdigest()
        got = {hashlib.sha256(urllib.request.urlopen(src, timeout=10).read()).hexdigest() for src in imgs if src}
        assert want in got, "the shown edit is the 0.2 strength's PNG"
        driver.find_element(By.CSS_SELECTOR, "#reviewer textarea, #reviewer input").send_keys("ana")
        driver.find_element(By.ID, "approve").click()
        wait.until(lambda d: "approved by ana" in d.find_element(By.ID, "result").text)
        driver.find_element(By.ID, "next").click()
        wait.until(lambda d: "p1 / blue" in d.find_element(By.ID, "info").text)
        driver.find_element(By.ID, "reject").click()
        wait.until(lambda d: "rejected by ana" in d.find_element(By.ID, "result").text)
        driver.find_element(By.CSS_SELECTOR, "#redo_as textarea, #redo_as input").send_keys("smoke@0.8")
        driver.find_element(By.ID, "next").click()
        wait.until(lambda d: "p2 / blue" in d.find_element(By.ID, "info").text)
        driver.find_element(By.ID, "redo").click()
        wait.until(lambda d: "redo asked (smoke@0.8)" in d.find_element(By.ID, "result").text)
    finally:
        driver.quit()
        review.close()
    got = decisions.current(out).set_index("item_id")
    assert got.loc["p0", "decision"] == "approve" and got.loc["p0", "preset_hash"] == low
    assert got.loc["p1", "decision"] == "reject" and got.loc["p1", "preset_hash"] == high
    assert got.loc["p2", "decision"] == "redo" and got.loc["p2", "redo_preset"] == "smoke@0.8"

    again = runner.invoke(cli, ["redo", "--output", out, "--model", str(tiny_model_dir)])
    assert again.exit_code == 0 and "1 edits to redo" in again.output, again.output[-3000:]
    rows = scores.read_latest(out)
    assert sorted(rows[rows["item_id"] == "p2"]["preset"]) == ["smoke@0.2", "smoke@0.6", "smoke@0.8", "smoke@1"]
    published = runner.invoke(cli, ["publish", "--output", out, "--to", shop])
    assert published.exit_code == 0 and "published 1 new or changed" in published.output, published.output
    assert hashlib.sha256((tmp_path / "shop" / "p0" / "blue.png").read_bytes()).hexdigest() == want
    assert sorted(str(p.relative_to(tmp_path / "shop")) for p in (tmp_path / "shop").rglob("*.png")) == ["p0/blue.png"]
    listed = pq.read_table(f"{shop}/published.parquet").to_pandas()
    assert list(listed["item_id"]) == ["p0"] and listed.loc[0, "png_sha256"] == want
    assert listed.loc[0, "preset_hash"] == low and listed.loc[0, "approved_by"] == "ana"
    second = runner.invoke(cli, ["publish", "--output", out, "--to", shop])
    assert "published 0 new or changed, 1 already in place" in second.output
