"""The lab: training and evaluating the catalog demo model (not part of the product or its CLI).

    python -m lab train-demo-model | train-demo-clip | evaluate-demo-model | evaluate-auto-strength |
                  evaluate-renoise-parity

The product (``tight_pipeline/``, ``flows/``) never imports this package; the shipped demo weights it trains stay
package data of the product (``tight_pipeline/demo_model/weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.console import command_of, fail, prepare_env

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
command = command_of(app)


@command("train-demo-model")
def train_demo_model_cmd(
    out: Path = typer.Option(Path("tight_pipeline/demo_model/weights"), help="model folder to write"),
    work: Path = typer.Option(Path(".tight-pipeline/demo-train"), help="checkpoints; run again to resume"),
    seed: int = typer.Option(0),
    train_images: int = typer.Option(8192, help="synthetic training shots"),
    vae_steps: int = typer.Option(1000, help="autoencoder steps (batch 32)"),
    unet_steps: int = typer.Option(3600, help="diffusion steps (batch 64)"),
    decoder_steps: int = typer.Option(300, help="decoder refinement steps (batch 32)"),
    max_steps: Optional[int] = typer.Option(None, help="pause after this many steps (checkpointed; run again to go on)"),
):
    """Train the catalog demo model (SDXL-shaped + IP-Adapter Plus) from scratch; resumable."""
    prepare_env()
    from lab.demo_model.train import Paused, TrainConfig, train_demo_model

    config = TrainConfig(seed=seed, train_images=train_images, vae_steps=vae_steps, unet_steps=unet_steps,
                         decoder_steps=decoder_steps)
    try:
        record = train_demo_model(out, work, config, log=typer.echo, max_steps=max_steps)
    except Paused as exc:
        typer.echo(str(exc))
        return
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"training wall time {record['train_wall_s']} s; final loss {record['final_loss']}")


@command("train-demo-clip")
def train_demo_clip_cmd(
    out: Path = typer.Option(Path("tight_pipeline/demo_model/clip_weights"), help="CLIP folder to write"),
    tokenizer: Path = typer.Option(Path("tight_pipeline/demo_model/weights/tokenizer"), help="the demo model's tokenizer"),
    steps: int = typer.Option(1200, help="contrastive steps (batch 256; ~0.6 s each on 2 cores)"),
    images: int = typer.Option(8192, help="training shots (the demo model's: seed 0)"),
):
    """Train the demo model's small CLIP (the `catalog-demo-clip` model's edit scorer and auto-strength judge)."""
    prepare_env()
    from lab.demo_model.clip import ClipTrainConfig, train_demo_clip

    record = train_demo_clip(out, tokenizer, ClipTrainConfig(steps=steps, images=images), log=typer.echo)
    typer.echo(f"final loss {record['final_loss']} in {record['seconds']} s; use it with --model catalog-demo-clip "
               f"or TIGHT_PIPELINE_CLIP_MODEL={out}")


@command("evaluate-demo-model")
def evaluate_demo_model_cmd(
    model: str = typer.Option("catalog-demo", help="model folder / spec / name"),
    report: Path = typer.Option(Path("docs/demo-model"), help="folder for evaluation.md/.json, tradeoff.png, examples.png"),
    images: int = typer.Option(64, help="held-out shots"),
    apply_presets: bool = typer.Option(False, "--apply-presets", help="write the calibrated catalog-* presets into configs/presets.yaml"),
    quick: bool = typer.Option(False, "--quick", help="DDIM 10/20 only, scales 0/0.4/1 (a smoke run)"),
):
    """Reconstruction vs editability of the demo model by adapter scale and schedule; calibrates its presets."""
    prepare_env()
    from lab.demo_model.calibration import apply_presets as write_presets
    from lab.demo_model.evaluate import EvalConfig, evaluate_demo_model
    from lab.tracking import log_demo_evaluation
    from tight_pipeline.settings import configs_dir

    config = EvalConfig(images=images)
    if quick:
        config = EvalConfig(images=images, runs=(("ddim", 10), ("ddim", 20)), scales=(0.0, 0.4, 1.0))
    result = evaluate_demo_model(model, report, config, log=typer.echo)
    run_id = log_demo_evaluation(result, report)
    for name, p in result["presets"].items():
        typer.echo(f"  {name:18s} {p['method']} {p['steps']} steps, scale {p['scale']}")
    if apply_presets:
        write_presets(result["presets"], configs_dir() / "presets.yaml", config.renoise_iterations)
        typer.echo(f"presets written to {configs_dir() / 'presets.yaml'}")
    typer.echo(f"report in {report}/ ; mlflow run {run_id}")


@command("evaluate-auto-strength")
def evaluate_auto_strength_cmd(
    model: str = typer.Option("catalog-demo", help="model folder / spec / name"),
    report: Path = typer.Option(Path("docs/demo-model/auto"), help="folder for auto.md/.json and auto.png"),
    images: int = typer.Option(64, help="shots (held-out unless --training-shots)"),
    steps: int = typer.Option(10, help="DDIM steps of the base schedule"),
    training_shots: bool = typer.Option(False, "--training-shots", help="read training shots (to choose the judge's "
                                        "settings without looking at the held-out ones)"),
    seed: int = typer.Option(0, help="shot seed"),
    fixed_scales: str = typer.Option("0,0.2,0.4,0.6,0.8,1", help="comma-separated fixed scales to compare with "
                                     "(the auto candidates 1, 0.4, 0 must be among them)"),
):
    """Automatic strength vs every fixed scale on the demo model, and the landed check vs the colour classifier."""
    prepare_env()
    from lab.demo_model.auto_eval import AutoEvalConfig, evaluate_auto_strength
    from lab.tracking import log_auto_evaluation

    try:
        scales = tuple(float(v) for v in fixed_scales.split(","))
    except ValueError:
        fail(f"--fixed-scales {fixed_scales!r} must be comma-separated numbers")
    if not set(AutoEvalConfig.auto_scales) <= set(scales):
        fail(f"--fixed-scales must include the auto candidates {', '.join(f'{s:g}' for s in AutoEvalConfig.auto_scales)}")
    config = AutoEvalConfig(images=images, steps=steps, heldout=not training_shots, seed=seed, fixed_scales=scales)
    result = evaluate_auto_strength(model, report, config, log=typer.echo)
    run_id = log_auto_evaluation(result, report)
    auto = result["table"][-1]
    typer.echo(f"auto: success {auto['edit_success']:.3f}, IoU {auto['iou']:.3f}, background {auto['background_psnr']:.1f} dB, "
               f"{result['cost_vs_fixed']}x the fixed preset's time; judge agrees on {result['agreement']['agreement']:.1%}")
    typer.echo(f"report in {report}/ ; mlflow run {run_id}")


@command("evaluate-renoise-parity")
def evaluate_renoise_parity_cmd(
    model: str = typer.Option("catalog-demo", help="model folder / spec / name"),
    report: Path = typer.Option(Path("docs/demo-model/renoise"), help="folder for renoise.md/.json"),
    images: int = typer.Option(16, help="held-out shots"),
    steps: int = typer.Option(10, help="ReNoise steps"),
):
    """ReNoise with and without its authors' schedule and noise regularisation on the demo model."""
    prepare_env()
    from lab.demo_model.renoise_eval import RenoiseEvalConfig, evaluate_renoise_parity
    from lab.tracking import log_renoise_evaluation

    result = evaluate_renoise_parity(model, report, RenoiseEvalConfig(images=images, steps=steps), log=typer.echo)
    run_id = log_renoise_evaluation(result, report)
    typer.echo(f"report in {report}/ ; mlflow run {run_id}")


if __name__ == "__main__":
    app()
