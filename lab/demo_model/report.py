"""The evaluation's report files: ``evaluation.md``, ``tradeoff.png`` and ``examples.png``."""

from __future__ import annotations

from lab.demo_model.calibration import calibrate_presets


def markdown_report(report: dict) -> str:
    cols = ["method", "steps", "scale", "psnr_vs_input", "gain_vs_scale0_db", "headroom_db", "psnr_vs_vae",
            "gain_vs_vae_db", "better_than_scale0", "ssim_vs_input", "edit_success", "iou", "background_psnr"]
    head = ("# Catalog demo model: reconstruction vs editability by adapter scale\n\n"
            f"{report['config']['images']} held-out synthetic shots (seed {report['heldout_seed']}), colour edits at CFG "
            f"{report['config']['guidance']}, one adapter scale for inversion and editing. VAE round-trip PSNR vs input: "
            f"{report['vae_psnr_vs_input']:.2f} dB (the ceiling of any reconstruction); segmentation IoU of the inputs "
            f"themselves: {report['segmentation_iou_of_inputs']:.3f} (the ceiling of the shape score). Wall time "
            f"{report['wall_s']:.0f} s.\n\n")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["table"]:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    legend = ("\n\n`gain_vs_scale0_db`: paired reconstruction gain over scale 0 of the same run, against the input; "
              "`headroom_db`: VAE round-trip PSNR minus scale 0's, the most any condition could add against the input; "
              "`gain_vs_vae_db`: the gain against the VAE round-trip (the inversion's own error, which the condition acts on); "
              "`better_than_scale0`: share of shots reconstructed better than at scale 0.\n")
    probe = ""
    if report.get("condition_probe"):
        probe = ("\n## What the image condition tells the model\n\n"
                 "MSE of the clean-latent prediction from a noised held-out latent, text alone (scale 0) vs text + the "
                 "shot's own image vs text + another shot's image (scale 1). A useful adapter makes `own_image` clearly "
                 "lower than `text_only`.\n\n| timestep | text_only | own_image | other_image |\n|---|---|---|---|\n")
        probe += "\n".join(f"| {r['timestep']} | {r['text_only']:.4f} | {r['own_image']:.4f} | {r['other_image']:.4f} |"
                           for r in report["condition_probe"]) + "\n"
    if report.get("token_probe"):
        probe += ("\n## What the image tokens carry\n\n"
                  "Held-out R^2 of a ridge probe for facts about the shot that no caption states (product position "
                  "`dx`, size `scale`), from the image encoder's hidden states (what the adapter reads) and from the "
                  "adapter's image tokens (what the UNet's image attention sees). 1 = fully determined, <= 0 = nothing. "
                  "High for the encoder and low for the tokens means the Resampler drops it.\n\n"
                  "| target | encoder_states_r2 | adapter_tokens_r2 |\n|---|---|---|\n")
        probe += "\n".join(f"| {r['target']} | {r['encoder_states_r2']:.3f} | {r['adapter_tokens_r2']:.3f} |"
                            for r in report["token_probe"]) + "\n"
    presets = "\n".join(f"- `{k}`: {v['method']} {v['steps']} steps, scale {v['scale']}" for k, v in report["presets"].items())
    return head + "\n".join(lines) + legend + probe + "\n## Presets derived from this table\n\n" + presets + "\n"


def plot_tradeoff(table: list[dict]) -> bytes:
    from tight_pipeline.reporting import plots

    with plots.figure(1, 2, size=(11, 4.2)) as (fig, (ax1, ax2)):
        _draw_tradeoff(table, ax1, ax2)
        return plots.png(fig, dpi=110)


def _draw_tradeoff(table: list[dict], ax1, ax2) -> None:
    ref_steps = max(r["steps"] for r in table if r["method"] == "ddim")
    runs = sorted({(r["method"], r["steps"]) for r in table}, key=lambda k: (k[0], k[1]))
    for method, steps in runs:
        rs = [r for r in table if r["method"] == method and r["steps"] == steps]
        ax1.plot([r["psnr_vs_input"] for r in rs], [r["edit_success"] for r in rs], "o-", label=f"{method} {steps}")
        if method == "ddim" and steps == ref_steps:
            for r in rs:
                ax1.annotate(f"s={r['scale']:g}", (r["psnr_vs_input"], r["edit_success"]), textcoords="offset points",
                             xytext=(4, 4), fontsize=8)
    ax1.set_xlabel("reconstruction PSNR vs input (dB)")
    ax1.set_ylabel("colour-edit success")
    ax1.set_title("Reconstruction vs edit success, one point per adapter scale")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    chosen = calibrate_presets(table)["catalog-balanced"]  # the run the balanced preset was picked from
    rs = [r for r in table if r["method"] == chosen["method"] and r["steps"] == chosen["steps"]]
    scales = [r["scale"] for r in rs]
    ax2.plot(scales, [r["edit_success"] for r in rs], "o-", label="edit success")
    ax2.plot(scales, [r["iou"] for r in rs], "s-", label="shape IoU")
    ax2.plot(scales, [r["background_psnr"] / 40 for r in rs], "^-", label="background PSNR / 40 dB")
    ax2.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax2.axhline(0.85, color="grey", lw=0.8, ls=":")
    ax2.axvline(chosen["scale"], color="tab:red", lw=0.8, alpha=0.6)
    ax2.set_xlabel(f"adapter scale ({chosen['method']} {chosen['steps']} steps; red: catalog-balanced)")
    ax2.set_title("Edit success and shape preservation by scale")
    ax2.set_ylim(0, 1.05)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)


def examples_sheet(shots, examples: dict, config):
    """Rows: held-out shots; columns: input, reconstruction at scale 0 and 1, edits at every scale (DDIM 50);
    ``config``: the evaluation's ``EvalConfig``."""
    from PIL import Image, ImageDraw

    key = max((r for r in config.runs if r[0] == "ddim"), key=lambda r: r[1])
    tile, pad, head = 128, 4, 16
    cols = 3 + len(config.scales)
    n = min(6, len(shots))
    sheet = Image.new("RGB", (cols * (tile + pad), head + n * (tile + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    labels = ["input", "recon s=0", f"recon s={config.scales[-1]:g}"] + [f"edit s={s:g}" for s in config.scales]
    for c, label in enumerate(labels):
        draw.text((c * (tile + pad) + 4, 2), label, fill="black")
    for r in range(n):
        row = [shots[r].image, examples[(*key, config.scales[0])][r][0], examples[(*key, config.scales[-1])][r][0]]
        row += [examples[(*key, s)][r][1] for s in config.scales]
        for c, im in enumerate(row):
            sheet.paste(im.resize((tile, tile), Image.Resampling.NEAREST), (c * (tile + pad), head + r * (tile + pad)))
    return sheet
