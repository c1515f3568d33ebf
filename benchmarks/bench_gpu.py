"""GPU benchmark of the engine: items/min by preset, edits and batch, GPU memory, the UNet's own floor, peers.

    python benchmarks/bench_gpu.py                               # full-size SDXL (random weights), CUDA, bf16, 1024 px, 50 steps
    python benchmarks/bench_gpu.py --size tiny --device cpu      # the same code on the tiny model: seconds (CI smoke test)
    python benchmarks/bench_gpu.py --family flux                 # FLUX.1-dev's architecture (12B + T5-XXL), built in GPU memory
    python benchmarks/bench_gpu.py --cases turbo-balanced:1:8:512,balanced:1:8 --switches reduce-overhead

It writes SDXL's real architecture with random weights in the layout the project loads (``make_tiny_model(size=
"full")``: diffusers folder + h94-layout IP-Adapter + ViT-H image encoder; no download), loads it with the
project's own ``resolve_model_spec`` + ``TightInversion.from_spec``, and prints one JSON on stdout (progress lines on stderr):

- ``items``: per-item seconds and items/min for ``off`` / ``balanced`` / ``faithful`` with 1 and 4 edits, at batch 1
  and at the default batch (``--batch``, the spec's ``max_batch``), each with the GPU's peak memory;
- ``ratios``: image-conditioning overhead (``balanced`` / ``off``, same batch) and ``faithful`` / ``balanced``;
- ``unet_floor``: seconds per UNet call and per image at batch 1 ... 16 (the adapter live, scale 0.4);
- ``peers``: diffusers' LEDITS++ (invert + 1 edit) and plain SDXL txt2img with CFG on the same base weights, at
  batch 1 and at ``--batch`` (the project's own LEDITS++ path is a case like ours: ``ledits-pp:1:8``);
- ``switches``: the first cases again after ``torch.compile`` of the network in each ``--switches`` mode
  (``reduce-overhead`` = inductor + CUDA graphs for the batch's fixed shapes, ``max-autotune-no-cudagraphs``,
  ``default``), with the compile time (the first call's warm-up) beside them.

``--family flux`` builds FLUX.1-dev's real architecture with random weights directly in the GPU's memory in bf16
(~36 GB; writing and reading a 36 GB folder would cost minutes of a short GPU lease), writes only the XLabs
IP-Adapter and its ViT-L/14 image encoder (~1.6 GB) and loads those with the project's loader
(``models.prepare_pipeline``); default cases ``flux-balanced`` / ``flux-draft`` / ``off``; no UNet floor.

Random weights time exactly what real weights time (same shapes and kernels); their images are noise.
The first call of each shape is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def photos(n: int, resolution: int):
    from PIL import Image
    from skimage import data

    pool = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket(), data.chelsea()[::-1]]
    return [Image.fromarray(pool[i % len(pool)]).resize((resolution, resolution)) for i in range(n)]


EDIT_PROMPTS = ["in blue", "in red, studio light", "on a wooden table", "as a watercolour"]


def parse_cases(text: str) -> list[tuple[str, int, int, int]]:
    """``"balanced:1:8,turbo-balanced:1:8:512"`` -> [(preset, edits, batch, resolution), ...]; ``batch`` 0 = the
    default batch, resolution 0 (left out) = the model's."""
    cases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            fields = part.split(":")
            if len(fields) not in (3, 4):
                raise ValueError
            name, n_edits, batch, res = (*fields, "0")[:4]
            cases.append((name, int(n_edits), int(batch), int(res)))
        except ValueError:
            raise SystemExit(f"error: --cases item {part!r}: expected PRESET:EDITS:BATCH[:RESOLUTION], e.g. "
                             "balanced:1:8 or turbo-balanced:1:8:512") from None
    return cases


def at_resolution(engine, resolution: int):
    """The engine at another working size, sharing its loaded pipeline (nothing reloaded)."""
    if not resolution or resolution == engine.spec.resolution:
        return engine
    return type(engine)(engine.pipe, dataclasses.replace(engine.spec, resolution=resolution), engine.clip)


def bench_items(engine, device: str, cases, steps: int, label: dict | None = None) -> list[dict]:
    """Time each (preset, edits, batch, resolution) case: one warm-up at the same shapes with 2 steps (the kernels,
    allocations and — with a compiled network — the compilation a 50-step run uses; its time is ``warmup_s``), then
    the timed run. Each row goes to stderr as soon as it is measured, so a run cut short still leaves its figures."""
    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.presets import load_preset

    rows = []
    for name, n_edits, batch, res in cases:
        run_engine = at_resolution(engine, res)
        images = photos(batch, run_engine.spec.resolution)
        preset = load_preset(name)
        if preset.sampler == "ddim":  # few-step presets (Euler-ancestral / LCM, 4 steps) keep their own step count
            preset = dataclasses.replace(preset, steps=steps)
        requests = [ItemRequest(images[i], "a photo of a product",
                                [(f"e{k}", f"a photo of a product {EDIT_PROMPTS[k % len(EDIT_PROMPTS)]}")
                                 for k in range(n_edits)])
                    for i in range(batch)]
        warm = dataclasses.replace(preset, steps=min(2, preset.steps))
        t_warm, _ = timed(device, lambda: run_engine.edit_items(requests, warm))  # warm-up at these shapes
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        wall, results = timed(device, lambda: run_engine.edit_items(requests, preset))
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"{name} x{n_edits} batch {batch}: {failed[0]}")
        per_item = wall / batch
        phases = {k: round(sum(getattr(r.timings, k) for r in results) / batch, 4)
                  for k in ("encode_s", "embed_s", "invert_s", "denoise_s", "decode_s", "score_s")}
        rows.append({
            "preset": name, "method": preset.method, "sampler": preset.sampler, "steps": preset.steps,
            "edits": n_edits, "batch": batch, "resolution": run_engine.spec.resolution,
            "s_per_item": round(per_item, 4), "items_per_min": round(60 / per_item, 2), "phases_s": phases,
            "warmup_s": round(t_warm, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
            **(label or {}),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def unet_floor(engine, device: str, batches, repeats: int) -> list[dict]:
    from tight_pipeline.method import conditioning

    pipe = engine.pipe
    res = engine.spec.resolution
    image = photos(1, res)[0]
    text = conditioning.embed_text(pipe, ["a photo of a product"], res, res)
    img = conditioning.embed_image(pipe, engine.prepare_image(image))
    conditioning.set_adapter_scale(pipe, 0.4)
    latent_side = res // pipe.vae_scale_factor
    out = []
    for b in batches:
        z = torch.randn(b, 4, latent_side, latent_side, device=engine.device)
        cond = conditioning.TextCondition.cat([text] * b)
        rows = img.rows([False] * b) if img is not None else None
        conditioning.predict_noise(pipe, z, 500, cond, rows)  # warm-up
        wall, _ = timed(device, lambda: [conditioning.predict_noise(pipe, z, 500, cond, rows) for _ in range(repeats)])
        out.append({"batch": b, "s_per_call": round(wall / repeats, 4), "s_per_image": round(wall / repeats / b, 4)})
        print(json.dumps({"unet_floor": out[-1]}), file=sys.stderr, flush=True)
    return out


def peers(folder: Path, spec, device: str, steps: int, batch: int) -> dict:
    """diffusers' own pipelines on the same base weights (no adapter: LEDITS++'s invert() takes no image embeds):
    SDXL txt2img with CFG at batch 1 and ``batch`` (seconds per image), LEDITS++ invert + 1 edit (one image: its
    pipeline inverts one image per call)."""
    from diffusers import LEditsPPPipelineStableDiffusionXL, StableDiffusionXLPipeline

    from tight_pipeline.method.models import torch_dtype

    dtype = torch_dtype(spec.dtype)
    base = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True).to(device)
    base.set_progress_bar_config(disable=True)
    res = spec.resolution
    image = photos(1, res)[0]
    out = {}
    for b in sorted({1, batch}):
        def txt2img(b=b):
            return base(["a photo of a product"] * b, num_inference_steps=steps, guidance_scale=7.5, height=res,
                        width=res, output_type="latent")
        base(["a photo of a product"] * b, num_inference_steps=2, guidance_scale=7.5, height=res, width=res,
             output_type="latent")  # warm-up at these shapes
        t_txt, _ = timed(device, txt2img)
        out[f"txt2img_cfg_batch{b}_s_per_image"] = round(t_txt / b, 3)
        print(json.dumps({"peer": f"txt2img batch {b}", "s_per_image": round(t_txt / b, 3)}), file=sys.stderr, flush=True)
    ledits = LEditsPPPipelineStableDiffusionXL.from_pipe(base)
    ledits.set_progress_bar_config(disable=True)

    def invert_and_edit():
        ledits.invert(image=image, source_prompt="a photo of a product", num_inversion_steps=steps, skip=0.0,
                      height=res, width=res)
        return ledits(editing_prompt=["in blue"], edit_guidance_scale=7.0, output_type="pil")

    invert_and_edit()
    t_ledits, _ = timed(device, invert_and_edit)
    out["ledits_pp_invert_plus_1_edit_s"] = round(t_ledits, 3)
    return out


def switches(engine, device: str, modes: list[str], cases, steps: int) -> list[dict]:
    """The cases again with the network compiled in each mode (``torch.compile``, fixed shapes: ``dynamic=False``;
    the timestep reaches the network as a tensor, so the steps of a batch share one graph). Mode ``eager`` is
    TorchDynamo's capture alone (``backend="eager"``: no code generation; what the CPU test runs). Each row carries
    dynamo's graph counts (``graphs``: unique graphs captured). A mode that fails is a row with its error, not the
    end of the run."""
    from torch._dynamo.utils import counters

    net = engine.network_of(engine.pipe)
    rows = []
    for mode in modes:
        torch._dynamo.reset()
        counters.clear()
        if mode == "eager":
            net.compile(backend="eager", dynamic=False)
        else:
            net.compile(mode=None if mode == "default" else mode, fullgraph=False, dynamic=False)
        try:
            got = bench_items(engine, device, cases, steps, label={"switch": f"compile:{mode}"})
            for row in got:
                row["graphs"] = int(counters["stats"]["unique_graphs"])
            rows += got
        except Exception as exc:  # noqa: BLE001 - a figure we could not take is reported, the others still count
            rows.append({"switch": f"compile:{mode}", "error": f"{type(exc).__name__}: {exc}"[:400]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    torch._dynamo.reset()
    net._compiled_call_impl = None  # back to eager
    return rows


def build_flux_engine(folder: Path, size: str, device: str, dtype: str, batch: int, compile_mode: str):
    """FLUX.1-dev's architecture (``size="full"``) or the tiny one with random weights, built in the device's
    memory in ``dtype``; the IP-Adapter and image encoder written to ``folder`` and loaded by the project's loader."""
    from safetensors.torch import save_file

    from tight_pipeline.method.flux import FluxTightInversion
    from tight_pipeline.method.models import prepare_pipeline, torch_dtype
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.testing.tiny_models import FLUX_ADAPTER_WEIGHT, TINY_RESOLUTION, build_tiny_flux

    folder.mkdir(parents=True, exist_ok=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype(dtype))
    try:
        with torch.device(device):
            pipe, vision, state = build_tiny_flux(0, folder=folder, size=size)
    finally:
        torch.set_default_dtype(previous)
    vision.save_pretrained(folder / "ip_adapter" / "image_encoder", safe_serialization=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, folder / "ip_adapter" / FLUX_ADAPTER_WEIGHT)
    del vision, state
    (folder / "model.yaml").write_text(
        "# FLUX architecture with random weights (bench_gpu.py --family flux); the base lives in memory only.\n"
        f"name: random-flux-{size}\nfamily: flux\nbase: .\nadapter: ip_adapter\nadapter_subfolder: ''\n"
        f"adapter_weight: {FLUX_ADAPTER_WEIGHT}\nimage_encoder: image_encoder\n"
        f"resolution: {1024 if size == 'full' else TINY_RESOLUTION}\n")
    spec = resolve_model_spec(str(folder), device=device, dtype=dtype, max_batch=batch, compile=compile_mode)
    return FluxTightInversion(prepare_pipeline(pipe, spec), spec, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=["sdxl", "flux"], default="sdxl")
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="default: 50 (full; FLUX 28), 4 (tiny)")
    ap.add_argument("--batch", type=int, default=8, help="the default batch: items per engine call and max_batch")
    ap.add_argument("--work", default=None, help="where the random model folder is written (reused if present)")
    ap.add_argument("--quick", action="store_true", help="balanced and off with 1 edit only, no peers")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--compile", default="", help="torch.compile mode for the network from the start ('' = off)")
    ap.add_argument("--switches", default="", help="compile modes to time the first --switch-cases again with, e.g. "
                    "'reduce-overhead' (inductor + CUDA graphs) or 'reduce-overhead,max-autotune-no-cudagraphs'")
    ap.add_argument("--switch-cases", default="", help="cases for --switches (default: the first two cases)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--cases", default="", help="PRESET:EDITS:BATCH[:RESOLUTION] list run in this order, e.g. "
                    "'balanced:1:8,turbo-balanced:1:8:512' (batch 0 = --batch; 'none' = only --switch-cases); default: off/balanced/faithful x "
                    "1/4 edits x --batch/1 (FLUX: off/flux-balanced/flux-draft x 1 edit)")
    ap.add_argument("--resolution", type=int, default=None, help="override the model's resolution (CPU smoke runs)")
    ap.add_argument("--floor-batches", default="", help="UNet floor batch sizes, e.g. '1,8' (default 1,2,4,8,16 full)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))
    from tight_pipeline.method.specs import resolve_model_spec
    from tight_pipeline.method.factory import load_engine
    from tight_pipeline.testing.tiny_models import make_tiny_model

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    flux = args.family == "flux"
    steps = args.steps or ((28 if flux else 50) if args.size == "full" else 4)
    folder = Path(args.work or f"/tmp/tp-bench-{args.size}-{args.family}")
    report: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "family": args.family, "size": args.size, "dtype": dtype,
                    "steps": steps, "batch": args.batch}
    t_build = 0.0
    if flux:
        t_load, engine = timed(args.device, lambda: build_flux_engine(folder, args.size, args.device, dtype, args.batch,
                                                                       args.compile))
        spec = engine.spec
        if args.resolution:
            engine = at_resolution(engine, args.resolution)
            spec = engine.spec
    else:
        if not (folder / "model.yaml").exists():
            t_build, _ = timed("cpu", lambda: make_tiny_model(folder, size=args.size,
                                                               dtype=torch.float16 if args.size == "full" else None))
        spec = resolve_model_spec(str(folder), device=args.device, dtype=dtype, max_batch=args.batch,
                                  compile=args.compile, channels_last=args.channels_last,
                                  **({"resolution": args.resolution} if args.resolution else {}))
        t_load, engine = timed(args.device, lambda: load_engine(spec))
    report.update(build_s=round(t_build, 1), load_s=round(t_load, 1), resolution=spec.resolution,
                  compile=args.compile, channels_last=args.channels_last)
    if args.device.startswith("cuda"):
        report["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    print(json.dumps({k: report[k] for k in ("device", "family", "size", "load_s")}), file=sys.stderr, flush=True)

    if args.cases == "none":  # only the --switch-cases (the eager figures come from another run on the card)
        cases = []
    elif args.cases:
        cases = [(n, e, b or args.batch, r) for n, e, b, r in parse_cases(args.cases)]
    elif flux:
        cases = [(n, 1, args.batch, 0) for n in ("off", "flux-balanced", "flux-draft")]
    else:
        names = ["off", "balanced"] if args.quick else ["off", "balanced", "faithful"]
        cases = [(n, e, b, 0) for b in sorted({args.batch, 1}, reverse=True) for n in names
                 for e in ([1] if args.quick else [1, 4])]
    items = bench_items(engine, args.device, cases, steps)
    report["items"] = items

    def per_item(name, n, b):
        return next((r["s_per_item"] for r in items if r["preset"] == name and r["edits"] == n and r["batch"] == b
                     and r["resolution"] == spec.resolution), None)

    report["ratios"] = {}
    for b in sorted({r["batch"] for r in items}):
        off, balanced, faithful = (per_item(n, 1, b) for n in ("off", "balanced", "faithful"))
        if off and balanced:
            report["ratios"][f"balanced_over_off_batch{b}"] = round(balanced / off, 3)
        if faithful and balanced:
            report["ratios"][f"faithful_over_balanced_batch{b}"] = round(faithful / balanced, 3)
        for fast in ("turbo-balanced", "turbo-draft", "turbo-faithful", "lcm-balanced"):
            few = per_item(fast, 1, b)
            if few and balanced:  # the few-step target: >= 5x balanced's items/min, same card, same run
                report["ratios"][f"{fast}_speedup_over_balanced_batch{b}"] = round(balanced / few, 2)
    if args.switches:
        switch_cases = ([(n, e, b or args.batch, r) for n, e, b, r in parse_cases(args.switch_cases)]
                        if args.switch_cases else cases[:2])
        if not switch_cases:
            raise SystemExit("error: --switches needs cases: give --switch-cases (or --cases)")
        report["switches"] = switches(engine, args.device, [m.strip() for m in args.switches.split(",") if m.strip()],
                                      switch_cases, steps)
    if not flux:
        floor = ([int(b) for b in args.floor_batches.split(",")] if args.floor_batches
                 else [1, 2, 4, 8, 16] if args.size == "full" else [1, 4, 8])
        report["unet_floor"] = unet_floor(engine, args.device, floor, 5)
    if not (args.quick or args.no_peers or flux):
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        report["peers"] = peers(folder, spec, args.device, steps, args.batch)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
