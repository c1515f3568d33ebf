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
