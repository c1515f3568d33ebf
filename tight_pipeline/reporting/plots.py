"""Plots as PNG bytes (matplotlib, headless): the one home of the figure code the reports and flows share."""

from __future__ import annotations

import io
from contextlib import contextmanager


@contextmanager
def figure(*subplots: int, size: tuple[float, float] = (5.5, 4)):
    """``with figure(1, 2, size=(11, 4)) as (fig, axes):`` a headless figure, closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*(subplots or (1, 1)), figsize=size)
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def png(fig, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def tradeoff_curve(table) -> bytes:
    """Reconstruction (PSNR vs the VAE round-trip) against edit strength, one point per adapter scale
    (``table``: rows with scale, edit_change, psnr_vs_vae)."""
    with figure() as (fig, ax):
        ax.plot(table["edit_change"], table["psnr_vs_vae"], "o-")
        for r in table.itertuples():
            ax.annotate(f"s={r.scale:g}", (r.edit_change, r.psnr_vs_vae), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("edit strength (mean |edit - reconstruction|)")
        ax.set_ylabel("reconstruction PSNR vs VAE round-trip (dB)")
        ax.set_title("Tight Inversion trade-off by adapter scale")
        ax.grid(alpha=0.3)
        return png(fig, dpi=120)


def benchmark_plot(table) -> bytes:
    """One point per peer of an edit benchmark (``reporting/benchmark.summarize``): what the edit kept (PSNR of the
    unedited part, up) against what it did (CLIP of the edited image to the edit prompt, right, when measured; else
    the whole image's PSNR, where lower = more changed), structure distance in the label when measured."""
    import pandas as pd

    def numbers(name):
        return pd.to_numeric(table[name], errors="coerce") if name in table else pd.Series([float("nan")] * len(table))

    clip = numbers("clip_whole")
    use_clip = clip.notna().any()
    x = clip if use_clip else numbers("psnr_whole")
    y = numbers("psnr_unedited")
    structure = numbers("structure_distance")
    # a byte-exact unedited part (a given mask) says 100 dB: drawn just above the rest, marked, not 60 dB away
    finite = y[y < 99]
    top = (finite.max() + 4) if len(finite) else 100.0
    with figure(size=(6.5, 4.5)) as (fig, ax):
        for i, r in enumerate(table.itertuples()):
            if pd.isna(x[i]) or pd.isna(y[i]):
                continue
            exact = y[i] >= 99
            ax.scatter([x[i]], [top if exact else y[i]], s=60, marker="^" if exact else "o")
            label = str(r.peer) + (" (exact: 100 dB)" if exact else "") + (
                f"  (structure {structure[i]:.1f}e-3)" if pd.notna(structure[i]) else "")
            y_i = top if exact else y[i]
            ax.annotate(label, (x[i], y_i), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("CLIP score of the edit (whole image) →" if use_clip else "PSNR of the whole image (dB)")
        ax.set_ylabel("PSNR of the unedited part (dB) →")
        ax.set_title("Edit benchmark: what the edit kept vs what it did")
        ax.grid(alpha=0.3)
        return png(fig, dpi=120)
