"""Command line: ``tight-pipeline edit | run [--dry-run] | variants | demo | tradeoff | benchmark | bench-set | deploy |
decide | redo | publish | presets | make-tiny-model`` (the demo model's training and evaluations are the lab's: ``python -m lab``).

Parses, calls the library or a flow, prints where things are. Every command has one error rule
(``command_of``): bad input exits with status 2 and one line naming the cause.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from flows.console import (UsageError, command_of, fail, fail_over_limit, prepare_env, print_plan, print_summary,
                           run_flow, service_failure)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tight Inversion for product photos at catalog scale.")
command = command_of(app)


@command("make-tiny-model")
def make_tiny_model_cmd(out_dir: Path = typer.Argument(..., help="folder to write"), seed: int = typer.Option(0),
                        family: str = typer.Option("sdxl", help="sdxl (h94 IP-Adapter) or flux (XLabs IP-Adapter)"),
                        turbo: bool = typer.Option(False, "--turbo", help="SDXL-Turbo's layout (Euler-ancestral "
                                                   "scheduler, trailing timesteps)")):
    """Write a tiny model with random weights in the real folder layout (for tests and first runs)."""
    prepare_env()
    from tight_pipeline.testing.tiny_models import make_tiny_flux_model, make_tiny_model

    if family not in ("sdxl", "flux"):
        fail(f"--family {family!r}: choose sdxl or flux")
    if turbo and family != "sdxl":
        fail("--turbo is an SDXL layout: use it with --family sdxl")
    path = make_tiny_flux_model(out_dir, seed=seed) if family == "flux" else make_tiny_model(out_dir, seed=seed, turbo=turbo)
    typer.echo(f"tiny model written to {path} (load it with --model {path})")


@command()
def presets():
    """List the presets with their settings and hashes."""
    from tight_pipeline.method.presets import load_presets

    presets = load_presets()
    width = max(len(name) for name in presets)
    for p in presets.values():
        scale = ("auto:" + ",".join(f"{s:g}" for s in p.auto_scales)) if p.auto else f"{p.inversion_scale:g}/{p.edit_scale:g}"
        typer.echo(f"{p.name:{width}s} {p.hash}  {p.method:12s} steps={p.steps:<3d} scale={scale} "
                   f"{'cfg++' if p.guidance_mode == 'cfgpp' else 'cfg'}={p.guidance:g}  {p.description}")


@command()
def edit(
    image: Path = typer.Argument(..., help="photo to edit (PNG/JPEG/WebP...)"),
    source_prompt: str = typer.Option(..., "--source-prompt", help="what the photo shows"),
    edits: list[str] = typer.Option(..., "--edit", help="edit prompt; repeat for several edits"),
    preset: Optional[str] = typer.Option(None, help="preset name (see `tight-pipeline presets`); name@scale allowed "
                                         "(default: balanced; flux-balanced for FLUX models)"),
    model: Optional[str] = typer.Option(None, help="model folder / spec YAML / name (default: catalog-demo)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    mask: Optional[Path] = typer.Option(None, "--mask", help="where the edits may change the photo (white = may "
                                        "change; the photo's size): outside it the output keeps the photo's pixels"),
    region: Optional[str] = typer.Option(None, "--region", help="auto | mask | whole (default: mask with --mask, "
                                         "else the preset's region)"),
    output_size: str = typer.Option("input", "--output-size", help="input: PNGs at the photo's size, composited "
                                    "by region; working: the model's working-size images"),
):
    """Edit one photo: writes reconstruction.png, one PNG per edit, sheet.png and scores.json."""
    prepare_env()
    from tqdm import tqdm

    from tight_pipeline.reporting import sheets

    from tight_pipeline.data import storage
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.method.items import BatchError, ItemRequest
    from tight_pipeline.method.presets import load_preset

    spec = resolve_model_spec(model)
    chosen = load_preset(_default_preset(preset, spec))
    if not image.exists():
        raise FileNotFoundError(f"image {image} does not exist")
    if output_size not in ("input", "working"):
        raise UsageError(f"--output-size {output_size!r} must be input or working")
    decoded = storage.decode_photo(image.read_bytes())
    photo, notes = decoded.image, decoded.notes
    edit_list = [(f"edit_{i + 1:02d}", p) for i, p in enumerate(edits)]
    regions = _edit_regions(mask, region, photo.size, edit_list)
    _ensure_default_model(model, spec)
    engine = load_engine(spec, clip_model=os.environ.get("TIGHT_PIPELINE_CLIP_MODEL"))
    separate = chosen.inversion_scale != chosen.edit_scale or spec.traits.separate_edit_pass
    phases = 3 if separate and edits else 2
    with tqdm(total=chosen.steps * phases, desc=f"{image.name} [{chosen.name}]", unit="step", file=sys.stderr) as bar:
        result = engine.edit_items([ItemRequest(photo, source_prompt, edit_list, regions=regions,
                                                pixels=decoded.pixels)], chosen,
                                   progress=lambda phase: bar.update(1))[0]
    if isinstance(result, BaseException):
        raise result.cause if isinstance(result, BatchError) else result
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    full = output_size == "input" and result.full_reconstruction is not None
    (Image.fromarray(result.full_reconstruction) if full else result.reconstruction).save(out / "reconstruction.png")
    outputs = {e: Image.fromarray(result.full_edits[e]) if full else result.edits[e] for e, _ in edit_list}
    for edit_id, img in outputs.items():
        img.save(out / f"{edit_id}.png")
    tiles = []
    for e, p in edit_list:
        shown = outputs[e]
        if full and result.edit_scores[e].get("region_source") != "whole":
            shown = sheets.outline(shown, Image.fromarray(result.region_masks[e].astype("uint8") * 255))
        tiles.append((p, shown))
    sheet = sheets.side_by_side([("input", Image.fromarray(result.photo) if full else result.input),
                                 ("reconstruction", Image.open(out / "reconstruction.png"))] + tiles)
    sheet.save(out / "sheet.png")
    report = {
        "image": str(image), "source_prompt": source_prompt, "preset": chosen.to_dict(), "model": spec.to_dict(),
        "scores": result.scores, "lpips_note": "lpips not computed: no local backbone weights",
        "edits": {e: {"prompt": p, **result.edit_scores[e]} for e, p in edit_list},
        "timings_s": result.timings.as_dict(), "warnings": notes + result.warnings,
    }
    (out / "scores.json").write_text(json.dumps(report, indent=2))
    for w in notes + result.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"reconstruction PSNR {result.scores['psnr_vs_vae']:.2f} dB vs VAE round-trip, "
               f"{result.scores['psnr_vs_input']:.2f} dB vs input; wrote {out}/ (sheet.png, scores.json)")


def _edit_regions(mask: Path | None, region: str | None, size: tuple[int, int], edit_list) -> dict:
    """``edit``'s region for every edit: ``--mask`` (region mask unless ``--region`` says otherwise), or the
    ``--region`` mode, or none (the preset's)."""
    from tight_pipeline.data import storage
    from tight_pipeline.method.region import REGION_MODES, EditRegion

    if region is not None and region not in REGION_MODES:
        raise UsageError(f"--region {region!r} must be one of {', '.join(REGION_MODES)}")
    if region == "mask" and mask is None:
        raise UsageError("--region mask needs --mask FILE")
    if mask is not None and not mask.exists():
        raise FileNotFoundError(f"mask {mask} does not exist")
    mode = region or ("mask" if mask is not None else None)
    if mode is None:
        return {}
    pixels = storage.decode_mask(mask.read_bytes(), size, what=f"mask {mask}") if mode == "mask" else None
    return {edit_id: EditRegion(mode, pixels) for edit_id, _ in edit_list}


def _default_preset(preset: str | None, spec) -> str:
    from tight_pipeline.pipeline.config import default_preset

    return default_preset(preset, spec)


def _ensure_default_model(ref: str | None, spec, notice: bool = True) -> None:
    """The built-in tiny model is written on first use; any other model must already be on the machine. With no
    ``--model`` (``notice``), say that the default is the demo model, which knows only its toy products."""
    if ref is None and notice:
        typer.echo(f"model: {spec.name}, the shipped {spec.resolution}-px demo model (it knows four toy products): "
                   f"for real photos pass --model (a local SDXL / FLUX folder; README, Models)", err=True)
    if ref in (None, "tiny-sdxl", "tiny-sdxl-turbo", "tiny-flux") and not Path(spec.base).exists():
        from tight_pipeline.testing.tiny_models import make_tiny_flux_model, make_tiny_model

        typer.echo(f"writing the built-in tiny model to {spec.base} (random weights: plumbing, not quality)", err=True)
        if spec.family == "flux":
            make_tiny_flux_model(spec.base)
        else:
            make_tiny_model(spec.base, turbo=ref == "tiny-sdxl-turbo")


@command()
def deploy(serve: bool = typer.Option(False, "--serve", help="register without a work pool and run the flows from "
                                      "this process when due (blocks)"),
           pool_type: str = typer.Option("process", "--pool-type", help="the work pool's type when it does not exist "
                                         "yet: process (a worker process runs each flow run) or kubernetes (a pod "
                                         "per flow run, from infra/prefect/k8s-base-job-template.json)")):
    """Register the scheduled flows of infra/prefect/prefect.yaml (nightly localization, weekly variants, monthly
    trade-off) with the Prefect server at PREFECT_API_URL: work pool, schedules, concurrency limit 1, parameters.
    Site values are the file's {{ $TP_* }} placeholders, from the environment or the file's site_defaults. A worker
    of the pool runs them: prefect worker start --pool tight-pipeline-pool, or the Deployment of
    infra/k8s/prefect-worker.yaml for --pool-type kubernetes (docs/deploy.md)."""
    prepare_env()
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        fail("deploy needs a Prefect server: start one (python infra/local/services.py start prefect) and set "
              "PREFECT_API_URL=http://127.0.0.1:4200/api")
    from flows.deployments import DeploymentFileError, build_served, load, register

    try:
        definitions = load()
        if serve:  # prefect's serve() below registers them
            deployments = build_served(definitions)
            registered = [{"flow": d.flow_name, "name": d.name, "cron": ", ".join(c for c, _ in x.crons), "pool": "-",
                           "id": "served here"} for d, x in zip(deployments, definitions)]
        else:
            registered = register(definitions, pool_type=pool_type)
        for d in registered:
            typer.echo(f"  {d['flow']}/{d['name']:24s} cron {d['cron']:12s} pool {d['pool']:22s} id {d['id']}")
    except DeploymentFileError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        message = service_failure(exc)
        if message is None:
            raise
        fail(message)
    typer.echo(f"registered {len(registered)} deployments at {api} (UI: {api.removesuffix('/api')}/deployments)")
    if serve:
        from prefect import serve as prefect_serve

        prefect_serve(*deployments)


# The compute options of `run` and `variants` (JobConfig's fields of the same names; docs/deploy.md).
ACTORS = typer.Option(1, help="most actors in the pool (one model per actor)")
MIN_ACTORS = typer.Option(0, help="fewest actors: the pool grows to --actors as the cluster scales up "
                          "(0 = a fixed pool of --actors)")
ACTOR_CPUS = typer.Option(1.0, help="CPUs reserved per actor (its torch threads on a cluster)")
GPUS_PER_ACTOR = typer.Option(None, help="GPUs per actor (default: 1 for a device: cuda model, 0 for cpu; auto: 1 "
                              "when the cluster declares GPUs)")
BATCH_SIZE = typer.Option(0, help="items per model batch (0 = the model spec's max_batch)")
ACTOR_WAIT = typer.Option(900.0, help="seconds to wait for the first actors (nodes scaling up, model loading) "
                          "before stopping with an error")
RECHECK_PHOTOS = typer.Option(False, "--recheck-photos", help="before skipping a done item, read its photo and masks and "
                              "redo it when their bytes changed (replaced at the same URI); one read per done item")
PNG_LEVEL = typer.Option(2, "--png-level", min=0, max=9, help="PNG compression of the outputs (0-9): 2 encodes a 4-MP "
                         "photo in a third of the time of Pillow's 6 for 23 % larger files (docs/benchmarks.md)")
CHECKS = typer.Option("basic", "--checks", help="automatic checks' profile for every output (configs/checks.yaml: "
                      "basic, marketplace-white, none): the review queues failures, publish refuses them")
OUTPUT_SIZE = typer.Option("input", "--output-size", help="input: output PNGs at each photo's own size, composited "
                           "by each edit's region; working: the model's working-size images")


@command()
def run(
    manifest: str = typer.Option(..., help="manifest URL: JSONL/CSV/Parquet on file://, s3://, gs://, ..."),
    output: str = typer.Option(..., help="output prefix URL"),
    preset: Optional[str] = typer.Option(None, help="default preset, items may override (default: balanced; "
                                         "flux-balanced for FLUX models)"),
    model: Optional[str] = typer.Option(None, help="model folder / spec YAML / name (default: catalog-demo)"),
    actors: int = ACTORS,
    min_actors: int = MIN_ACTORS,
    actor_cpus: float = ACTOR_CPUS,
    gpus_per_actor: Optional[float] = GPUS_PER_ACTOR,
    batch_size: int = BATCH_SIZE,
    actor_wait: float = ACTOR_WAIT,
    max_failure_rate: float = typer.Option(1.0, help="exit non-zero when more rows than this fraction fail"),
    item_timeout: float = typer.Option(0.0, help="per-item time limit in seconds (0 = none)"),
    max_pixels: int = typer.Option(40_000_000, help="refuse images with more pixels (checked before decoding)"),
    output_size: str = OUTPUT_SIZE,
    png_level: int = PNG_LEVEL,
    recheck_photos: bool = RECHECK_PHOTOS,
    checks: str = CHECKS,
    strengths: Optional[str] = typer.Option(None, "--strengths", help="also render every item at these adapter "
                                            "scales, in this job (e.g. 0.2,0.6,1.0): each as preset NAME@S, its own "
                                            "rows, for a review's strength slider"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and plan only: print items to do / done before / "
                                 "invalid rows per preset, and exit without loading a model or starting Ray/Prefect"),
):
    """Run the catalog-localization flow over a manifest (a file, or a prefix ending in / of many files)."""
    prepare_env()
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.pipeline.submit import check_cluster

    spec = resolve_model_spec(model)
    if not dry_run:
        _ensure_default_model(model, spec)
    preset = _default_preset(preset, spec)
    if output_size not in ("input", "working"):
        fail(f"--output-size {output_size!r} must be input or working")
    sweep = _strengths(strengths)
    if dry_run:
        return print_plan(manifest, output, preset, model, strengths=sweep)
    check_cluster()
    from flows.catalog_localization import catalog_localization

    summary = run_flow(catalog_localization, manifest=manifest, output=output, **_preset_params(preset),
                        model=model, strengths=list(sweep) or None, checks=_checks(checks),
                        actors=actors, actor_cpus=actor_cpus, max_failure_rate=max_failure_rate,
                        item_timeout_s=item_timeout, max_pixels=max_pixels, min_actors=min_actors,
                        gpus_per_actor=gpus_per_actor, batch_size=batch_size, actor_wait_s=actor_wait,
                        output_size=output_size, png_level=png_level, recheck_photos=recheck_photos)
    print_summary(summary)
    fail_over_limit(summary, max_failure_rate)


def _preset_params(text: str) -> dict:
    """``--preset NAME@S`` as the flows' parameters (a shipped preset, a bounded strength, automatic strength); an
    unknown preset or strength is one line here."""
    from tight_pipeline.method.presets import load_preset
    from tight_pipeline.pipeline.config import split_preset

    load_preset(text)
    name, strength, auto = split_preset(text)
    return {"preset": name, "strength": strength, "auto_strength": auto}


def _checks(name: str) -> str:
    from tight_pipeline.data.checks import load_profile

    return load_profile(name).name  # an unknown profile is one line


def _strengths(text: str | None) -> tuple[float, ...]:
    """``--strengths 0.2,0.6,1.0`` -> (0.2, 0.6, 1.0); one line naming what is wrong."""
    if not text:
        return ()
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--strengths {text!r} must be comma-separated adapter scales, e.g. 0.2,0.6,1.0") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values) or len(set(values)) != len(values):
        raise UsageError(f"--strengths {text!r}: give distinct adapter scales in 0..1, e.g. 0.2,0.6,1.0")
    return values


@command("run-job", hidden=True)
def run_job_cmd(config: str = typer.Option(..., "--config", help="the run's JobConfig as JSON (written by the submitter)")):
    """The driver of a submitted run (tight_pipeline/pipeline/submit.py): runs the job on this Ray node, prints its
    progress, writes its result to <output>/runs/<run_id>/job_result.json. Not for people: `run` submits it."""
    prepare_env()
    import time as _time

    from tight_pipeline.data import storage
    from tight_pipeline.pipeline.job import run_job
    from tight_pipeline.pipeline.submit import config_from_json, result_to_json, result_url

    job_config = config_from_json(config)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done == total or _time.monotonic() - last[0] >= 2.0:  # the submitter parses these lines
            typer.echo(f"tight-pipeline progress: {done}/{total} items")
            last[0] = _time.monotonic()

    result = run_job(job_config, progress=progress)
    storage.write_bytes_atomic(result_url(job_config), result_to_json(result).encode())
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    typer.echo(f"run {job_config.run_id}: {counts}; {result.processed_items} items processed, "
               f"{result.skipped_items} done before, {result.wall_s:.0f} s")


@command()
def variants(
    manifest: str = typer.Option(..., help="manifest URL (items need item_id, image_uri, source_prompt; edits are "
                                 "not needed)"),
    output: str = typer.Option(..., help="output prefix URL"),
    n: int = typer.Option(4, "--n", help="variants per item (items may override with variants: {n, styles})"),
    styles: str = typer.Option("", help="style set in configs/variants.yaml (default: the file's default, product)"),
    preset: Optional[str] = typer.Option(None, help="preset (default: balanced; flux-balanced for FLUX models); "
                                         "creative lets scenes move further"),
    model: Optional[str] = typer.Option(None, help="model folder / spec YAML / name (default: catalog-demo)"),
    actors: int = ACTORS,
    min_actors: int = MIN_ACTORS,
    actor_cpus: float = ACTOR_CPUS,
    gpus_per_actor: Optional[float] = GPUS_PER_ACTOR,
    batch_size: int = BATCH_SIZE,
    actor_wait: float = ACTOR_WAIT,
    max_failure_rate: float = typer.Option(1.0, help="exit non-zero when more rows than this fraction fail"),
    recheck_photos: bool = RECHECK_PHOTOS,
    checks: str = CHECKS,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and plan only (variants to do / done before)"),
):
    """N styled variants of every item (one inversion per item serves all its variants). Re-runs skip done
    variants; a larger --n adds only the new ones. Writes <item>/variants.png (input + variants) per item."""
    prepare_env()
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.pipeline.submit import check_cluster
    from tight_pipeline.data.variants import VariantRequest, load_style_set

    spec = resolve_model_spec(model)
    style_set = load_style_set(styles or None)
    VariantRequest(n, style_set)
    if not dry_run:
        _ensure_default_model(model, spec)
    preset = _default_preset(preset, spec)
    if dry_run:
        return print_plan(manifest, output, preset, model, n, styles)
    check_cluster()
    from flows.variant_generation import variant_generation

    typer.echo(f"{n} variants per item from style set {style_set.name!r} ({style_set.hash}): "
               + "; ".join(style_set.styles), err=True)
    params = _preset_params(preset)
    if params.pop("auto_strength"):
        fail(f"--preset {preset}: a variant job renders each variant at the preset's strength (NAME or NAME@S)")
    summary = run_flow(variant_generation, manifest=manifest, output=output, n=n, styles=styles, **params,
                        checks=_checks(checks), model=model, actors=actors, actor_cpus=actor_cpus, max_failure_rate=max_failure_rate,
                        min_actors=min_actors, gpus_per_actor=gpus_per_actor, batch_size=batch_size,
                        actor_wait_s=actor_wait, recheck_photos=recheck_photos)
    print_summary(summary)
    typer.echo(f"  variant sheets  {output}/<preset-hash>/<item_id>/variants.png")
    fail_over_limit(summary, max_failure_rate)


@command()
def demo(
    preset: Optional[str] = typer.Option(None, help="preset (default: catalog-cfgpp, the demo model's best in the edit "
                                         "benchmark (docs/benchmark.md); balanced with --photos)"),
    output: Optional[str] = typer.Option(None, help="output prefix (default: $TIGHT_PIPELINE_HOME/demo/out)"),
    model: Optional[str] = typer.Option(None, help="model (default: catalog-demo, the shipped demo model)"),
    photos: bool = typer.Option(False, "--photos", help="real photos (scikit-image) instead of product shots; "
                                "meant for real SDXL/FLUX weights given with --model"),
):
    """End to end on bundled inputs: Prefect + Ray + Parquet + MLflow, contact sheet at the end."""
    prepare_env()
    from tight_pipeline.demo import write_catalog_demo_inputs, write_demo_inputs
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.presets import load_presets
    from tight_pipeline.settings import state_dir

    spec = resolve_model_spec(model)
    _ensure_default_model(model, spec, notice=False)
    if preset is None:
        preset = "catalog-cfgpp" if not photos and "catalog-cfgpp" in load_presets() else spec.traits.default_preset
        if spec.traits.default_preset != "balanced":  # a family with its own default (FLUX) keeps it
            preset = spec.traits.default_preset
    folder = str(state_dir() / "demo" / ("photos" if photos else "catalog"))
    manifest = write_demo_inputs(folder) if photos else write_catalog_demo_inputs(folder)
    out = output or str(state_dir() / "demo" / "out")
    typer.echo(f"demo manifest: {manifest}  (model {spec.name}, preset {preset})")
    from flows.catalog_localization import catalog_localization

    summary = run_flow(catalog_localization, manifest=manifest, output=out, **_preset_params(preset), model=model)
    print_summary(summary)
    typer.echo(f"  review it        tight-pipeline review --output {out}   (needs the review extra; approve, then "
               f"tight-pipeline publish --output {out} --to FOLDER)")


@command()
def tradeoff(
    manifest: str = typer.Option(..., help="manifest URL"),
    output: str = typer.Option(..., help="output prefix URL"),
    scales: str = typer.Option("0,0.2,0.4,0.6,0.8,1.0", help="comma-separated adapter scales"),
    sample: int = typer.Option(8, help="items sampled from the manifest"),
    preset: str = typer.Option("balanced", help="base preset"),
    model: Optional[str] = typer.Option(None),
):
    """Sweep the adapter scale on a sample; logs the reconstruction-vs-edit curve to MLflow."""
    prepare_env()
    from flows.tradeoff_benchmark import tradeoff_benchmark
    from tight_pipeline.method.specs import resolve_model_spec

    try:
        values = [float(s) for s in scales.split(",")]
    except ValueError:
        raise UsageError(f"--scales {scales!r} must be comma-separated numbers, e.g. 0,0.4,1.0") from None
    _ensure_default_model(model, resolve_model_spec(model))
    result = run_flow(tradeoff_benchmark, manifest=manifest, output=output,
                       scales=values, sample=sample, base_preset=preset, model=model)
    for row in result["table"]:
        typer.echo(f"scale {row['scale']:.2f}: recon {row['psnr_vs_vae']:.2f} dB vs VAE, edit change {row['edit_change']:.4f}")
    typer.echo(f"mlflow run {result['mlflow_run_id']}")


# The demo model's peers: our presets (CFG++, CFG with the authors' sharpening, plain CFG), catalog-cfgpp without the
# image condition (@0: text-only DDIM + CFG++ at the same steps), its automatic strength, its region-true output,
# LEDITS++ at the same step count.
DEMO_PEERS = ("catalog-cfgpp,catalog-sharp,catalog-balanced,catalog-cfgpp+mask,catalog-cfgpp@auto,catalog-cfgpp@0,"
              "catalog-ledits")


@command()
def benchmark(
    data: str = typer.Option(..., help="a folder in PIE-Bench's layout (mapping_file.json + annotation_images/), "
                             "e.g. the real PIE-Bench or one written by `tight-pipeline bench-set`; or a manifest "
                             "whose edits have masks (mask_uri; metadata.edit_type for --types)"),
    output: str = typer.Option(..., help="output prefix URL (edits, rows, benchmark/ with the table and plot)"),
    peers: str = typer.Option(DEMO_PEERS, help="comma-separated presets to compare; NAME+mask = that preset's "
                              "region-true output with the benchmark's mask; ledits-pp / catalog-ledits = LEDITS++"),
    model: Optional[str] = typer.Option(None, help="model (default: catalog-demo)"),
    clip: Optional[str] = typer.Option(None, help="local CLIP folder for the CLIP columns (default: the model's own "
                                       "clip, if any; the field uses openai/clip-vit-large-patch14)"),
    dino: Optional[str] = typer.Option(None, help="local DINO ViT (transformers layout, e.g. facebook/dino-vitb8 in "
                                       "the HF cache) for the structure distance"),
    lpips: bool = typer.Option(True, "--lpips/--no-lpips", help="LPIPS (needs torchvision + cached SqueezeNet)"),
    types: Optional[str] = typer.Option(None, help="only these editing_type_ids (a manifest: metadata.edit_type), "
                                        "comma-separated (e.g. 6,8)"),
    limit: Optional[int] = typer.Option(None, help="only the first N cases (after --types)"),
    actors: Optional[int] = typer.Option(None, help="most actors in the pool (default: the job's)"),
):
    """Run peers on a PIE-Bench-format set in one job; write the field's metrics as a table, a plot, an MLflow run."""
    prepare_env()
    from flows.edit_benchmark import edit_benchmark, load_cases, parse_peers
    from tight_pipeline.method.specs import resolve_model_spec

    names = [p.strip() for p in peers.split(",") if p.strip()]
    if not names:
        raise UsageError("--peers is empty: name at least one preset")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1")
    chosen = [t.strip() for t in types.split(",")] if types else None
    parse_peers(names)  # bad input is said before any service starts
    load_cases(data, chosen, limit)
    _ensure_default_model(model, resolve_model_spec(model))
    result = run_flow(edit_benchmark, data=data, output=output, peers=names, model=model, clip=clip, dino=dino,
                      lpips=lpips, types=chosen, limit=limit, actors=actors)
    from tight_pipeline.reporting.benchmark import markdown
    import pandas as pd

    typer.echo(markdown(pd.DataFrame(result["table"])))
    for metric, why in result["missing"].items():
        typer.echo(f"missing: {metric}: {why}")
    typer.echo(f"best: {result['best']} ({result['best_by']})")
    typer.echo(f"{result['cases']} cases x {len(names)} peers; job {result['job_s']:.0f} s")
    typer.echo(f"table, rows and plot: {result['folder']}/  (table.md, rows.csv, plot.png)")
    typer.echo(f"mlflow run {result['mlflow_run_id']}")


@command("bench-set")
def bench_set(
    out_dir: Path = typer.Argument(..., help="folder to write (PIE-Bench layout)"),
    shots: int = typer.Option(12, help="cases per edit type"),
    size: int = typer.Option(256, help="image size in pixels"),
    seed: int = typer.Option(7),
):
    """Write a small PIE-Bench-format set of held-out demo shots (5 edit types, true masks) for `benchmark`."""
    from tight_pipeline.demo import BENCH_TYPES, write_demo_bench

    if shots < 1 or not 32 <= size <= 4096:
        raise UsageError(f"--shots {shots} must be >= 1 and --size {size} in 32..4096")
    path = write_demo_bench(str(out_dir), shots=shots, size=size, seed=seed)
    typer.echo(f"{shots * len(BENCH_TYPES)} cases ({shots} of each edit type {', '.join(BENCH_TYPES)}) at {size} px: {path}")


@command()
def decide(
    output: str = typer.Option(..., help="the run's output prefix URL (local folder or s3://)"),
    item: list[str] = typer.Option(..., "--item", help="ITEM_ID or ITEM_ID/EDIT_ID (repeatable): every current ok "
                                   "output of the item (or that edit), under every preset hash unless --preset-hash"),
    decision: str = typer.Option(..., "--decision", help="approve | reject | redo"),
    reviewer: str = typer.Option(..., "--reviewer", help="who decides (recorded with the decision)"),
    note: str = typer.Option("", "--note"),
    preset_hash: Optional[str] = typer.Option(None, "--preset-hash", help="only the outputs of this preset hash"),
    redo_preset: str = typer.Option("", "--redo-preset", help="with redo: what to render instead (e.g. balanced@0.6)"),
    override_checks: bool = typer.Option(False, "--override-checks", help="with approve: publish it even though it "
                                         "failed its automatic checks (recorded in the decision)"),
):
    """Record a decision about outputs (one Parquet part under OUTPUT/review/decisions/, the PNG's sha256 with it)."""
    import pandas as pd

    from tight_pipeline.data import scores
    from tight_pipeline.review import decisions

    if override_checks and decision != "approve":
        raise UsageError("--override-checks goes with --decision approve")
    rows = scores.read_latest(output, ["status", "edit_uri", "preset", "adapter_scale", "checks_failed"])
    rows = rows[rows["status"] == "ok"]
    chosen = []
    for spec in item:
        item_id, _, edit_id = spec.partition("/")
        sel = rows[(rows["item_id"] == item_id) & ((rows["edit_id"] == edit_id) if edit_id else True)]
        if preset_hash:
            sel = sel[sel["preset_hash"] == preset_hash]
        if not len(sel):
            raise UsageError(f"--item {spec}: no current ok output of {output}"
                             + (f" under preset hash {preset_hash}" if preset_hash else ""))
        chosen.append(sel)
    picked = pd.concat(chosen).drop_duplicates(scores.KEY)
    if redo_preset:
        from tight_pipeline.method.presets import load_preset

        again = load_preset(redo_preset).hash  # an unknown preset is one line here, not a failed redo later
        same = picked[picked["preset_hash"] == again]
        if len(same):
            r = same.iloc[0]
            raise UsageError(f"--redo-preset {redo_preset} renders the same output as {r['item_id']}/{r['edit_id']}'s "
                             f"({r['preset']}, hash {again}): name another strength or preset")
    made = [decisions.Decision.about(r, decision, reviewer, note=note, redo_preset=redo_preset,
                                     override_checks=override_checks) for _, r in picked.iterrows()]
    decisions.write(output, made)
    failed = dict(zip(zip(picked["item_id"], picked["edit_id"], picked["preset_hash"]), picked["checks_failed"]))
    for d in made:
        why = failed.get((d.item_id, d.edit_id, d.preset_hash))
        held = (f"  (failed checks: {why}; " + ("override recorded)" if d.override_checks else
                                                "publish holds it back without --override-checks)")
                if d.decision == "approve" and isinstance(why, str) and why else "")
        typer.echo(f"{d.decision}: {d.item_id}/{d.edit_id} ({d.preset}, {d.preset_hash}) sha256 "
                   f"{d.png_sha256[:12]}{held}")
    from flows.review_state import mirror

    typer.echo(mirror(output))


@command()
def redo(
    output: str = typer.Option(..., help="the run's output prefix URL: its open redo decisions are run into it"),
    model: Optional[str] = typer.Option(None, help="model (default: catalog-demo); the run's own model, as before"),
    preset: Optional[str] = typer.Option(None, help="default preset (every redo line names its own)"),
    checks: str = CHECKS,
):
    """Run the output's redo requests (decide --decision redo --redo-preset P) as an ordinary job into the same
    output: the new outputs appear beside the old ones, under the new preset's hash."""
    prepare_env()
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.pipeline.submit import check_cluster
    from tight_pipeline.review.requests import redo_manifest

    uri, count = redo_manifest(output)
    if uri is None:
        typer.echo("no open redo requests (decide --decision redo --redo-preset NAME@STRENGTH asks for one)")
        return
    from tight_pipeline.data.storage import redact

    typer.echo(f"{count} edits to redo: {redact(uri)}")
    spec = resolve_model_spec(model)
    _ensure_default_model(model, spec)
    check_cluster()
    from flows.catalog_localization import catalog_localization

    summary = run_flow(catalog_localization, manifest=uri, output=output,
                       **_preset_params(_default_preset(preset, spec)), model=model, checks=_checks(checks))
    print_summary(summary)


@command()
def publish(
    output: str = typer.Option(..., help="the run's output prefix URL"),
    to: str = typer.Option(..., "--to", help="where approved PNGs go: <to>/<item_id>/<edit_id>.png and "
                           "<to>/published.parquet"),
):
    """Copy exactly the approved, not re-rendered outputs (sha256-checked); idempotent."""
    from tight_pipeline.review.publish import publish as publish_approved

    from flows.review_state import mirror

    for line in publish_approved(output, to).lines():
        typer.echo(line)
    typer.echo(mirror(output))


@command()
def review(
    output: str = typer.Option(..., help="the run's output prefix URL (local folder or s3://)"),
    port: int = typer.Option(7860, help="port on 127.0.0.1"),
):
    """Open the review app (needs the review extra: pip install 'tight-pipeline[review]'): before/after, a strength
    slider over the rendered strengths, approve / reject / redo written as decisions. No GPU, no model."""
    import time

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the review app needs Gradio: pip install 'tight-pipeline[review]' (the catalog team's "
                         "machine; GPU workers never need it)") from None
    from tight_pipeline.method.presets import load_preset
    from tight_pipeline.review.app import launch

    def preset_hash_of(name: str) -> str:
        return load_preset(name).hash

    import threading

    from flows.review_state import mirror

    def on_decision() -> None:  # the review's copy in MLflow follows each decision, off the reviewer's click
        threading.Thread(target=lambda: print(mirror(output)), daemon=True).start()

    app_, url = launch(output, port=port, preset_hash_of=preset_hash_of, on_decision=on_decision)
    typer.echo(f"review of {output}: {url}  ({len(app_.queue_model)} edits; Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        app_.close()


if __name__ == "__main__":
    app()
