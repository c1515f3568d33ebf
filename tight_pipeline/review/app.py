"""The review app: ``tight-pipeline review --output OUT`` (Gradio, on 127.0.0.1; the ``review`` extra).

Per item and edit: the photo and the chosen output in a before/after slider, a **strength slider** that moves between
the strengths that were rendered (it snaps to the nearest one), the rendered presets as one-click choices, the
edit's own trade-off curve (photo kept vs edit change, the shown strength marked) and its scores in words; then
**approve**, **reject** or **redo** (at another strength or preset, with a note), written as decisions
(``decisions.write``: the PNG's sha256 is read when the button is pressed; approving an output that failed its
automatic checks needs the override box, recorded). A queue (all, not yet decided, failed checks, worst first) pages
through the keys; only the shown card's PNGs are read. It needs no GPU and no model: it reads what
runs wrote, local or ``s3://`` (remote PNGs are cached in a temporary folder to be served).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from tight_pipeline.data import storage
from tight_pipeline.review import decisions
from tight_pipeline.review.queue import QUEUES, Card, Queue

_CACHE = Path(tempfile.gettempdir()) / "tight-pipeline-review"


def local_file(uri: str) -> str:
    """A local path with the bytes of ``uri`` (itself when it is local)."""
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if os.path.exists(path):
            return path
    _CACHE.mkdir(parents=True, exist_ok=True)
    target = _CACHE / (hashlib.sha256(uri.encode()).hexdigest()[:24] + Path(uri).suffix)
    if not target.exists():
        tmp = target.with_suffix(".part")
        tmp.write_bytes(storage.read_bytes(uri))
        tmp.replace(target)
    return str(target)


def tradeoff_png(card: Card, shown: str) -> bytes:
    """The edit's trade-off curve over its rendered strengths: photo kept (dB) and edit change, the shown one
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [o for o in card.outputs if o.strength is not None]
    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=100)
    if pts:
        xs = [o.strength for o in pts]
        ax.plot(xs, [o.kept_db if o.kept_db is not None else float("nan") for o in pts], "o-", color="#1f77b4")
        ax.set_xlabel("strength (image condition)")
        ax.set_ylabel("photo kept outside the change (dB)", color="#1f77b4", fontsize=8)
        right = ax.twinx()
        right.plot(xs, [100 * o.change if o.change is not None else float("nan") for o in pts], "s--",
                   color="#d62728")
        right.set_ylabel("edit change (%)", color="#d62728", fontsize=8)
        for axis in (ax, right):  # plain numbers: an offset ("+8.358") reads as a change a reviewer cannot place
            axis.ticklabel_format(axis="y", useOffset=False, style="plain")
        # Honest scales: the change from 0 and the kept dB over at least 10 dB, so noise never looks like a trend.
        changes = [100 * o.change for o in pts if o.change is not None]
        right.set_ylim(0, max(1.0, 1.25 * max(changes, default=0.0)))
        kept = [o.kept_db for o in pts if o.kept_db is not None]
        if kept:
            mid, span = (max(kept) + min(kept)) / 2, max(10.0, 1.2 * (max(kept) - min(kept)))
            ax.set_ylim(mid - span / 2, mid + span / 2)
        for o in pts:
            if o.preset_hash == shown:
                ax.axvline(o.strength, color="0.3", lw=1)
                if o.kept_db is not None:
                    ax.plot([o.strength], [o.kept_db], "o", ms=12, mfc="none", mec="black", mew=2)
    ax.set_title(f"{card.item_id} / {card.edit_id}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def build(output: str, preset_hash_of=None, on_decision=None):
    """The Gradio app over ``output`` (not launched); ``preset_hash_of(name)`` (the CLI gives the presets' hash)
    refuses a redo that would render the output shown again; ``on_decision()`` is called after each recorded
    decision (the CLI mirrors the review to MLflow there, in the background)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    from PIL import Image

    q = Queue(output)

    def choices(queue: str, page: int):
        return [f"{i}/{e}" for i, e in q.keys(queue, int(page))]

    def show(key: str, strength: float | None = None, preset_hash: str | None = None):
        item_id, _, edit_id = (key or "").partition("/")
        card = q.card(item_id, edit_id)
        if preset_hash:
            out = next(o for o in card.outputs if o.preset_hash == preset_hash)
        else:
            out = card.nearest(strength if strength is not None else max(
                (o.strength for o in card.outputs if o.strength is not None), default=1.0))
        strengths = [o.strength for o in card.outputs if o.strength is not None] or [1.0]
        lo, hi = min(strengths), max(strengths)
        plot = Image.open(io.BytesIO(tradeoff_png(card, out.preset_hash)))
        info = (f"**{card.item_id} / {card.edit_id}** — “{card.prompt}”  \n"
                f"shown: **{out.preset}** (strength {out.strength if out.strength is not None else '-'}) · "
                f"review: **{out.state}**  \n{out.words()}  \n"
                f"rendered: {', '.join(f'{o.preset} ({o.state})' for o in card.outputs)}")
        slider = gr.Slider(minimum=lo, maximum=hi if hi > lo else lo + 1e-6, value=out.strength or lo,
                           step=_step(strengths), interactive=len(strengths) > 1)
        radio = gr.Radio(choices=[(o.preset, o.preset_hash) for o in card.outputs], value=out.preset_hash)
        return ((local_file(card.image_uri), local_file(out.edit_uri)), info, plot, slider, radio,
                out.preset_hash, f"`{Path(out.edit_uri).name}` · {out.preset_hash}")

    def on_queue(queue: str):
        keys = choices(queue, 0)
        return (gr.Dropdown(choices=keys, value=keys[0] if keys else None),
                gr.Number(value=0, maximum=q.pages(queue) - 1),
                f"{q.count(queue)} edits in “{queue}” · page 1 of {q.pages(queue)}")

    def on_page(queue: str, page: float):
        page = max(0, min(int(page or 0), q.pages(queue) - 1))
        keys = choices(queue, page)
        return (gr.Dropdown(choices=keys, value=keys[0] if keys else None),
                f"{q.count(queue)} edits in “{queue}” · page {page + 1} of {q.pages(queue)}")

    def step_item(queue: str, page: float, key: str, by: int):
        keys = choices(queue, int(page or 0))
        if not keys:
            return key
        i = keys.index(key) if key in keys else -1
        return keys[max(0, min(len(keys) - 1, i + by))]

    def decide(kind: str, key: str, shown: str, reviewer: str, note: str, redo_preset: str, override: bool = False):
        item_id, _, edit_id = (key or "").partition("/")
        try:
            row = q.row(item_id, edit_id, shown)
            if kind == "redo" and redo_preset and preset_hash_of is not None:
                if preset_hash_of(redo_preset.strip()) == shown:
                    raise decisions.DecisionError(f"{key}: {redo_preset} renders the output shown: name another "
                                                  f"strength or preset")
            made = decisions.Decision.about(row, kind, reviewer or "", note=note or "",
                                            redo_preset=redo_preset.strip() if kind == "redo" else "",
                                            override_checks=bool(override) and kind == "approve")
        except (decisions.DecisionError, ValueError, KeyError) as exc:
            return f"⚠ not recorded: {exc}", *show(key, preset_hash=shown)
        decisions.write(output, [made])
        if on_decision is not None:
            on_decision()
        q.record(made)  # this decision only; "reload" reads everything again (other reviewers' decisions too)
        verb = {"approve": "approved", "reject": "rejected", "redo": f"redo asked ({made.redo_preset})"}[kind]
        if kind == "approve" and row.get("checks_failed"):
            verb += (" despite failed checks (override recorded)" if made.override_checks else
                     " — it failed its automatic checks: publish holds it back unless approved with the override")
        return (f"✔ {made.item_id}/{made.edit_id} {made.preset}: {verb} by {made.reviewer} "
                f"(sha256 {made.png_sha256[:12]})"), *show(key, preset_hash=shown)

    with gr.Blocks(title="tight-pipeline review") as app:
        gr.Markdown(f"## Review · `{storage.redact(output)}`  \nMove the **strength** slider to see the edit at each "
                    f"rendered strength: high keeps more of the photo, low lets the edit move further. Approve what "
                    f"may go to the shop; only approved outputs are published.")
        shown = gr.State(None)
        with gr.Row():
            queue = gr.Radio(list(QUEUES), value="all", label="queue")
            page = gr.Number(value=0, precision=0, minimum=0, label="page (from 0)")
            counts = gr.Markdown(f"{q.count('all')} edits in “all” · page 1 of {q.pages('all')}")
            refresh = gr.Button("reload (others' decisions, new renderings)", elem_id="reload")
        with gr.Row():
            first = choices("all", 0)
            item = gr.Dropdown(choices=first, value=first[0] if first else None, label="item / edit",
                               elem_id="item")
            prev_btn = gr.Button("◀ previous", elem_id="prev")
            next_btn = gr.Button("next ▶", elem_id="next")
        with gr.Row():
            with gr.Column(scale=3):
                pair = gr.ImageSlider(label="photo ◀ ▶ edit", type="filepath", elem_id="pair")
                shown_name = gr.Markdown(elem_id="shown")
            with gr.Column(scale=2):
                strength = gr.Slider(0, 1, value=1, label="strength", elem_id="strength")
                rendered = gr.Radio(label="rendered presets (one click)", elem_id="rendered")
                curve = gr.Image(label="this edit's trade-off", type="pil", elem_id="curve")
                info = gr.Markdown(elem_id="info")
        with gr.Row():
            reviewer = gr.Textbox(label="reviewer", elem_id="reviewer")
            note = gr.Textbox(label="note", elem_id="note")
            redo_preset = gr.Textbox(label="redo as (preset or NAME@STRENGTH, e.g. balanced@0.6)", elem_id="redo_as")
            override = gr.Checkbox(label="approve despite failed automatic checks", elem_id="override")
        with gr.Row():
            approve = gr.Button("approve", variant="primary", elem_id="approve")
            reject = gr.Button("reject", variant="stop", elem_id="reject")
            redo = gr.Button("redo", elem_id="redo")
        result = gr.Markdown(elem_id="result")

        card_out = [pair, info, curve, strength, rendered, shown, shown_name]
        item.change(lambda k: show(k), item, card_out)
        strength.input(lambda k, s: show(k, strength=s), [item, strength], card_out, trigger_mode="always_last")
        rendered.input(lambda k, h: show(k, preset_hash=h), [item, rendered], card_out)
        queue.change(on_queue, queue, [item, page, counts])

        def on_reload(queue_name: str, key: str):
            q.reload()
            return (*on_queue(queue_name)[1:], *show(key)) if key else (*on_queue(queue_name)[1:], *card_blank())

        refresh.click(on_reload, [queue, item], [page, counts, *card_out])
        page.submit(on_page, [queue, page], [item, counts])
        prev_btn.click(lambda qq, p, k: step_item(qq, p, k, -1), [queue, page, item], item)
        next_btn.click(lambda qq, p, k: step_item(qq, p, k, 1), [queue, page, item], item)
        for button, kind in ((approve, "approve"), (reject, "reject"), (redo, "redo")):
            button.click(lambda k, h, r, n, p, o, kind=kind: decide(kind, k, h, r, n, p, o),
                         [item, shown, reviewer, note, redo_preset, override], [result, *card_out])
        def card_blank():
            return None, "no ok outputs in this output yet", None, gr.Slider(), gr.Radio(), None, ""

        app.load(lambda k: show(k) if k else card_blank(), item, card_out)
    app.queue_model = q
    return app


def _step(strengths: list[float]) -> float:
    gaps = sorted({round(b - a, 6) for a, b in zip(sorted(strengths), sorted(strengths)[1:]) if b > a})
    return min(gaps[0] / 2, 0.05) if gaps else 0.05


def launch(output: str, port: int = 7860, preset_hash_of=None, on_decision=None):
    """Serve the app on 127.0.0.1:``port`` (returns at once); returns (app, url)."""
    app = build(output, preset_hash_of, on_decision)
    app.queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False,
                           show_error=True, quiet=True)
    return app, url
