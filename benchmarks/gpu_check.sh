#!/usr/bin/env bash
# One short GPU session: the GPU tests, then the benchmark's done-when cases, each section time-boxed, everything
# written under $OUT (default ./.gpu-out) as it is measured, so a run cut short still leaves its figures.
#
#   bash benchmarks/gpu_check.sh                          # every section, in order of importance (~13 min on an H100)
#   SECTIONS=tests,sdxl bash benchmarks/gpu_check.sh      # one lease call (~7 min) ...
#   SECTIONS=switches,flux bash benchmarks/gpu_check.sh   # ... and the next (~6 min): each under a 10-minute call
#   SECTIONS=pipeline bash benchmarks/gpu_check.sh        # the whole pipeline on 4-MP photos (~4 min, after sdxl)
# (a lease is 15 minutes of device time in all, its start included: the estimates leave ~1 minute spare; FLUX
# comes last because a cut-off FLUX section still says how far it got).
#
# Sections (SECTIONS, comma-separated; default all four):
#   tests     pytest -m gpu (7 tests; thresholds as committed)                                 TESTS_S    (150 s)
#   sdxl      full-size SDXL, bf16, 1024 px, batch 8: balanced vs the few-step presets (the >= 5x target), 512 px,
#             balanced + 4 edits, LEDITS++ through the engine; UNet floor; diffusers' txt2img + LEDITS++ peers
#                                                                                        BENCH_S    (420 s)
#   switches  balanced + 4 edits again with torch.compile(mode="reduce-overhead") (inductor + CUDA graphs):
#             the compile time and the compiled items/min (the 6 items/min target; the eager figure is the sdxl
#             section's, same card)                                                      SWITCH_S   (300 s)
#   flux      FLUX.1-dev's architecture (12B transformer + T5-XXL, random, bf16) built in GPU memory,
#             flux-balanced at 1024 px                                                   FLUX_S     (240 s)
#   pipeline  (not in the default list) the real pipeline, not the engine alone: run_job on 4-MP catalog photos
#             with the sdxl section's random SDXL folder, balanced + 1 edit, batches of 8, the in-line actor
#             (actor_pipeline=1, PNG level 6) vs the default overlap (benchmarks/bench_overlap.py --model)
#                                                                                        PIPE_S     (240 s)
#
# BENCH_EXTRA is appended to every bench_gpu.py call: `BENCH_EXTRA="--size tiny --device cpu --steps 2"` runs the
# whole script on CPU in a minute (tests/test_benchmarks.py does, so that a lease is never spent on a script error).
# Needs: the diffusers wheel in .whl/ (see docs/gpu.md: `pip download ... -d .whl diffusers==0.42.1`) unless
# diffusers is installed. Copy $OUT to docs/gpu-results/<date>-<card>/ afterwards.
set -uo pipefail
OUT=${OUT:-.gpu-out}
SECTIONS=${SECTIONS:-tests,sdxl,switches,flux}
mkdir -p "$OUT"
if ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/tp-site .whl/*.whl
    export PYTHONPATH=/tmp/tp-site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TIGHT_PIPELINE_HOME=/tmp/tp-home
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys, torch, transformers, diffusers; print(sys.version.split()[0], torch.__version__, transformers.__version__, diffusers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
has() { [[ ",$SECTIONS," == *",$1,"* ]]; }
WORK=${WORK:-/tmp/tp-bench-full-sdxl}   # the random SDXL folder, written once and reused by later sections
EXTRA=(${BENCH_EXTRA:-})

if has tests; then
    echo "== pytest -m gpu"
    timeout "${TESTS_S:-150}" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
    echo "pytest rc=$?" | tee -a "$OUT/pytest.txt"
    tail -25 "$OUT/pytest.txt"
fi

if has sdxl; then
    echo "== bench_gpu sdxl"
    # balanced first, then the few-step presets right after it (same card, same run: >= 5x balanced's items/min is
    # the target), turbo-balanced at 512 px, balanced + 4 edits, LEDITS++ through the engine (2 items: its pipeline
    # inverts one image at a time); then the UNet floor and diffusers' own txt2img (batch 1 and 8) / LEDITS++.
    timeout "${BENCH_S:-420}" python3 benchmarks/bench_gpu.py --work "$WORK" --floor-batches 1,8 "${EXTRA[@]}" \
        --cases "${CASES:-balanced:1:8,turbo-balanced:1:8,turbo-draft:1:8,turbo-faithful:1:8,lcm-balanced:1:8,turbo-balanced:1:8:512,balanced:4:8,ledits-pp:1:2}" \
        > "$OUT/bench.json" 2> "$OUT/bench.log"
    echo "bench rc=$?"
    grep -v '^\[transformers\]' "$OUT/bench.log" | tail -30
    cat "$OUT/bench.json"
fi

if has switches; then
    echo "== bench_gpu switches"
    timeout "${SWITCH_S:-300}" python3 benchmarks/bench_gpu.py --work "$WORK" --no-peers --floor-batches 8 "${EXTRA[@]}" \
        --cases none --switch-cases "${SWITCH_CASES:-balanced:4:8}" --switches "${SWITCHES:-reduce-overhead}" \
        > "$OUT/switches.json" 2> "$OUT/switches.log"
    echo "switches rc=$?"
    grep -v '^\[transformers\]' "$OUT/switches.log" | tail -12
fi

if has flux; then
    echo "== bench_gpu flux"
    timeout "${FLUX_S:-240}" python3 benchmarks/bench_gpu.py --family flux --batch "${FLUX_BATCH:-1}" "${EXTRA[@]}" \
        --cases "${FLUX_CASES:-flux-balanced:1:0}" > "$OUT/flux.json" 2> "$OUT/flux.log"
    echo "flux rc=$? (124 = out of time; the log says how far it got)"
    grep -v '^\[transformers\]' "$OUT/flux.log" | tail -12
fi

if has pipeline; then
    echo "== bench_overlap pipeline (4-MP photos, the real actor path)"
    ACTOR_CPUS=${ACTOR_CPUS:-8} timeout "${PIPE_S:-240}" python3 benchmarks/bench_overlap.py --model "$WORK" \
        --preset balanced --edits 1 --items "${PIPE_ITEMS:-24}" --batch-size 8 > "$OUT/pipeline.json" 2> "$OUT/pipeline.log"
    echo "pipeline rc=$?"
    cat "$OUT/pipeline.json"
fi
