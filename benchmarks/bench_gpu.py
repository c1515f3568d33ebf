"""GPU benchmark of the engine: items/min by preset, edits and batch, GPU memory, the UNet's own floor, peers.

    python benchmarks/bench_gpu.py                               # full-size SDXL (random weights), CUDA, bf16, 1024 px, 50 steps
    python benchmarks/bench_gpu.py --size tiny --device cpu      # the same code on the tiny model: seconds (CI smoke test)

It writes SDXL's real architecture with random weights in the layout the project loads (``make_tiny_model(size=
"full")``: diffusers folder + h94-layout IP-Adapter + ViT-H image encoder; no download), loads it with the
project's own ``resolve_model_spec`` + ``TightInversion.from_spec``, and prints one JSON on stdout (progress lines on stderr):

- ``items``: per-item seconds and items/min for ``off`` / ``balanced`` / ``faithful`` with 1 and 4 edits, at batch 1
  and at the default batch (``--batch``, the spec's ``max_batch``), each with the GPU's peak memory;
- ``ratios``: image-conditioning overhead (``balanced`` / ``off``, same batch) and ``faithful`` / ``balanced``;
- ``unet_floor``: seconds per UNet call and per image at batch 1 ... 16 (the adapter live, scale 0.4);
- ``peers``: diffusers' LEDITS++ (invert + 1 edit) and plain SDXL txt2img with CFG on the same base weights.

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


def parse_cases(text: str) -> list[tuple[str, int, int]]:
    """``"balanced:1:8,off:1:8"`` -> [(preset, edits, batch), ...]; ``batch`` 0 = the default batch."""
    cases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            name, n_edits, batch = part.split(":")
            cases.append((name, int(n_edits), int(batch)))
        except ValueError:
            raise SystemExit(f"error: --cases item {part!r}: expected PRESET:EDITS:BATCH, e.g. balanced:1:8") from None
    return cases


def bench_items(engine, device: str, cases, steps: int) -> list[dict]:
    """Time each (preset, edits, batch) case: one warm-up at the same shapes with 2 steps (the kernels and
    allocations a 50-step run uses), then the timed run. Each row goes to stderr as soon as it is measured,
    so a run cut short still leaves its figures."""
    from tight_pipeline.method.items import ItemRequest
    from tight_pipeline.method.presets import load_preset

    rows = []
    images = photos(max(b for _, _, b in cases), engine.spec.resolution)
    for name, n_edits, batch in cases:
        preset = load_preset(name)
        if preset.sampler == "ddim":  # few-step presets (Euler-ancestral, 4 steps) keep their own step count
            preset = dataclasses.replace(preset, steps=steps)
        requests = [ItemRequest(images[i], "a photo of a product",
                                [(f"e{k}", f"a photo of a product {EDIT_PROMPTS[k]}") for k in range(n_edits)])
                    for i in range(batch)]
        engine.edit_items(requests, dataclasses.replace(preset, steps=min(2, preset.steps)))  # warm-up at these shapes
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        wall, results = timed(device, lambda: engine.edit_items(requests, preset))
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"{name} x{n_edits} batch {batch}: {failed[0]}")
        per_item = wall / batch
        phases = {k: round(sum(getattr(r.timings, k) for r in results) / batch, 4)
                  for k in ("encode_s", "embed_s", "invert_s", "denoise_s", "decode_s", "score_s")}
        rows.append({
            "preset": name, "method": preset.method, "steps": preset.steps, "edits": n_edits, "batch": batch,
            "s_per_item": round(per_item, 4), "items_per_min": round(60 / per_item, 2), "phases_s": phases,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
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


def peers(folder: Path, spec, device: str, steps: int) -> dict:
    """diffusers' own pipelines on the same base weights (no adapter: LEDITS++'s invert() takes no image embeds)."""
    from diffusers import LEditsPPPipelineStableDiffusionXL, StableDiffusionXLPipeline

    from tight_pipeline.method.models import torch_dtype

    dtype = torch_dtype(spec.dtype)
    base = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True).to(device)
    base.set_progress_bar_config(disable=True)
    res = spec.resolution
    image = photos(1, res)[0]
    txt2img = lambda: base("a photo of a product", num_inference_steps=steps, guidance_scale=7.5,  # noqa: E731
                           height=res, width=res, output_type="pil")
    txt2img()
    t_txt, _ = timed(device, txt2img)
    ledits = LEditsPPPipelineStableDiffusionXL.from_pipe(base)
    ledits.set_progress_bar_config(disable=True)

    def invert_and_edit():
        ledits.invert(image=image, source_prompt="a photo of a product", num_inversion_steps=steps, skip=0.0,
                      height=res, width=res)
        return ledits(editing_prompt=["in blue"], edit_guidance_scale=7.0, output_type="pil")

    invert_and_edit()
    t_ledits, _ = timed(device, invert_and_edit)
    return {"txt2img_cfg_s": round(t_txt, 3), "ledits_pp_invert_plus_1_edit_s": round(t_ledits, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="default: 50 (full), 4 (tiny)")
    ap.add_argument("--batch", type=int, default=8, help="the default batch: items per engine call and max_batch")
    ap.add_argument("--work", default=None, help="where the random model folder is written (reused if present)")
    ap.add_argument("--quick", action="store_true", help="balanced and off with 1 edit only, no peers")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--compile", default="", help="torch.compile mode for the UNet ('' = off)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--cases", default="", help="PRESET:EDITS:BATCH list run in this order, e.g. "
                    "'balanced:1:8,off:1:8' (batch 0 = --batch); default: off/balanced/faithful x 1/4 edits x --batch/1")
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
    steps = args.steps or (50 if args.size == "full" else 4)
    folder = Path(args.work or f"/tmp/tp-bench-{args.size}-sdxl")
    report: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "torch": torch.__version__, "size": args.size, "dtype": dtype, "steps": steps, "batch": args.batch}
    t_build = 0.0
    if not (folder / "model.yaml").exists():
        t_build, _ = timed("cpu", lambda: make_tiny_model(folder, size=args.size,
                                                           dtype=torch.float16 if args.size == "full" else None))
    spec = resolve_model_spec(str(folder), device=args.device, dtype=dtype, max_batch=args.batch,
                              compile=args.compile, channels_last=args.channels_last,
                              **({"resolution": args.resolution} if args.resolution else {}))
    t_load, engine = timed(args.device, lambda: load_engine(spec))
    report.update(build_s=round(t_build, 1), load_s=round(t_load, 1), resolution=spec.resolution,
                  compile=args.compile, channels_last=args.channels_last)

    if args.cases:
        cases = [(n, e, b or args.batch) for n, e, b in parse_cases(args.cases)]
    else:
        names = ["off", "balanced"] if args.quick else ["off", "balanced", "faithful"]
        cases = [(n, e, b) for b in sorted({args.batch, 1}, reverse=True) for n in names
                 for e in ([1] if args.quick else [1, 4])]
    items = bench_items(engine, args.device, cases, steps)
    report["items"] = items

    def per_item(name, n, b):
        return next((r["s_per_item"] for r in items if r["preset"] == name and r["edits"] == n and r["batch"] == b), None)

    report["ratios"] = {}
    for b in sorted({r["batch"] for r in items}):
        off, balanced, faithful = (per_item(n, 1, b) for n in ("off", "balanced", "faithful"))
        if off and balanced:
            report["ratios"][f"balanced_over_off_batch{b}"] = round(balanced / off, 3)
        if faithful and balanced:
            report["ratios"][f"faithful_over_balanced_batch{b}"] = round(faithful / balanced, 3)
    floor = ([int(b) for b in args.floor_batches.split(",")] if args.floor_batches
             else [1, 2, 4, 8, 16] if args.size == "full" else [1, 4, 8])
    report["unet_floor"] = unet_floor(engine, args.device, floor, 5)
    if not (args.quick or args.no_peers):
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        report["peers"] = peers(folder, spec, args.device, steps)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
