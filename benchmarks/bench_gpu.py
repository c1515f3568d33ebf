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


def bench_items(engine, device: str, presets: dict, edits_list, batches, steps: int) -> list[dict]:
    from tight_pipeline.engine.runner import ItemRequest

    rows = []
    images = photos(max(batches), engine.spec.resolution)
    for name, preset in presets.items():
        preset = dataclasses.replace(preset, steps=steps)
        for n_edits in edits_list:
            for batch in batches:
                requests = [ItemRequest(images[i], "a photo of a product",
                                        [(f"e{k}", f"a photo of a product {EDIT_PROMPTS[k]}") for k in range(n_edits)])
                            for i in range(batch)]
                engine.edit_items(requests[:batch], preset)  # warm-up at this shape
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                wall, results = timed(device, lambda: engine.edit_items(requests, preset))
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    raise RuntimeError(f"{name} x{n_edits} batch {batch}: {failed[0]}")
                per_item = wall / batch
                phases = {k: round(sum(r.timings[k] for r in results) / batch, 4)
                          for k in ("encode_s", "embed_s", "invert_s", "denoise_s", "decode_s", "score_s")}
                rows.append({
                    "preset": name, "method": preset.method, "edits": n_edits, "batch": batch,
                    "s_per_item": round(per_item, 4), "items_per_min": round(60 / per_item, 2), "phases_s": phases,
                    "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
                })
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def unet_floor(engine, device: str, batches, repeats: int) -> list[dict]:
    from tight_pipeline.engine import conditioning

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

    from tight_pipeline.engine.models import torch_dtype

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
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("TORCH_THREADS", os.cpu_count() or 1)))
    from tight_pipeline.engine.models import resolve_model_spec
    from tight_pipeline.engine.runner import TightInversion
    from tight_pipeline.engine.tiny_model import make_tiny_model
    from tight_pipeline.presets import load_preset

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
                              compile=args.compile, channels_last=args.channels_last)
    t_load, engine = timed(args.device, lambda: TightInversion.from_spec(spec))
    report.update(build_s=round(t_build, 1), load_s=round(t_load, 1), resolution=spec.resolution,
                  compile=args.compile, channels_last=args.channels_last)

    names = ["off", "balanced"] if args.quick else ["off", "balanced", "faithful"]
    edits = [1] if args.quick else [1, 4]
    batches = sorted({1, args.batch})
    items = bench_items(engine, args.device, {n: load_preset(n) for n in names}, edits, batches, steps)
    report["items"] = items

    def per_item(name, n, b):
        return next(r["s_per_item"] for r in items if r["preset"] == name and r["edits"] == n and r["batch"] == b)

    report["ratios"] = {
        f"balanced_over_off_batch{b}": round(per_item("balanced", 1, b) / per_item("off", 1, b), 3) for b in batches}
    if "faithful" in names:
        report["ratios"].update({f"faithful_over_balanced_batch{b}": round(per_item("faithful", 1, b) / per_item("balanced", 1, b), 3)
                                 for b in batches})
    report["unet_floor"] = unet_floor(engine, args.device, [1, 2, 4, 8, 16] if args.size == "full" else [1, 4, 8], 5)
    if not (args.quick or args.no_peers):
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        report["peers"] = peers(folder, spec, args.device, steps)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
