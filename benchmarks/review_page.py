"""How fast the review app opens and answers on a large output: 10,000 items x 3 strengths (30,000 scores rows).

    .venv/bin/python benchmarks/review_page.py [--items 10000] [--browser]
    .venv/bin/python benchmarks/review_page.py --from OUT --screenshot docs/review/app.png   # a real run's review

Writes a synthetic output the way a strength sweep writes one (scores parts of 2,000 rows, as workers write them;
a PNG only for the items a page shows — the app never reads another one), then prints:
- the queue's start: reading the scores' small columns and the decisions (``Queue(output)``);
- building the app and showing the first card (its two PNGs and the trade-off curve);
- a decision's round trip as the app does it (write a decision part, apply it to the queue, the card again), and
  the reload button's full re-read;
- with ``--browser`` (Chromium + chromedriver): the page's load in a real browser, from ``get(url)`` until the
  first card's file name is shown.
The target (issue 40): the page loads in under 2 s for a 10,000-item output.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tight_pipeline.data import scores, storage  # noqa: E402

STRENGTHS = (0.2, 0.6, 1.0)


def write_output(out: str, items: int, page: int = 50) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for n in range(items):
        item = f"item-{n:05d}"
        for k, s in enumerate(STRENGTHS):
            uri = storage.output_key(out, f"h{k}", item, "blue")
            if n < page:  # what the first page can show; the app reads no other PNG
                pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
                storage.write_bytes_atomic(uri, storage.encode_png(Image.fromarray(pixels)))
            rows.append({"run_id": "run1", "item_id": item, "edit_id": "blue", "preset": f"balanced@{s}",
                         "preset_hash": f"h{k}", "status": "ok", "edit_uri": uri,
                         "image_uri": storage.output_key(out, "h0", item, "blue"), "adapter_scale": s,
                         "edit_prompt": "a blue mug", "psnr_vs_input": float(40 - 10 * s - rng.random()),
                         "edit_change": s / 10, "checks_profile": "basic", "checks_failed": "",
                         "finished_at": f"2026-12-07T10:{n % 60:02d}:{k:02d}+00:00"})
        if len(rows) >= 2000:
            scores.write_part(out, "run1", rows)
            rows = []
    scores.write_part(out, "run1", rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--browser", action="store_true")
    parser.add_argument("--from", dest="source", help="an existing output instead of the synthetic one (not removed)")
    parser.add_argument("--screenshot", help="with the browser: save the loaded page as this PNG")
    args = parser.parse_args()
    args.browser = args.browser or bool(args.screenshot)
    from tight_pipeline.review import decisions
    from tight_pipeline.review.app import build
    from tight_pipeline.review.queue import Queue

    folder = Path(tempfile.mkdtemp(prefix="review-bench-"))
    if args.source:
        out = args.source
    else:
        out = str(folder / "out")
        t = time.perf_counter()
        write_output(out, args.items)
        print(f"output: {args.items} items x {len(STRENGTHS)} strengths = {args.items * len(STRENGTHS)} rows "
              f"(written in {time.perf_counter() - t:.1f} s)")

    t = time.perf_counter()
    q = Queue(out)
    print(f"queue start (scores' small columns + decisions): {time.perf_counter() - t:.2f} s, {len(q)} edits, "
          f"{q.pages()} pages")
    t = time.perf_counter()
    app = build(out)
    print(f"app built (queue read again): {time.perf_counter() - t:.2f} s")
    first = q.keys()[0]
    card = q.card(*first)
    if not args.source:  # never decide on a real run's outputs
        t = time.perf_counter()
        row = q.row(*first, card.outputs[-1].preset_hash)
        made = decisions.Decision.about(row, "approve", "bench")
        decisions.write(out, [made])
        q.record(made)
        q.card(*first)
        print(f"a decision's round trip in the app (read the PNG's sha256, write the decision, apply it, the card "
              f"again): {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        q.reload()
        print(f"the reload button (every score and decision read again): {time.perf_counter() - t:.2f} s")

    if args.browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app.queue()
        _, url, _ = app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                               quiet=True)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1500"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get("about:blank")
            loads = []
            for _ in range(3):
                t = time.perf_counter()
                driver.get(url)
                WebDriverWait(driver, 60).until(lambda d: ".png" in d.find_element(By.ID, "shown").text)
                loads.append(time.perf_counter() - t)
            print(f"page load in Chromium until the first card is shown: {', '.join(f'{x:.2f}' for x in loads)} s "
                  f"(first, then warm)")
            if args.screenshot:
                time.sleep(1.0)  # the curve and the images finish drawing
                Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(args.screenshot)
                print(f"screenshot: {args.screenshot}")
        finally:
            driver.quit()
            app.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
