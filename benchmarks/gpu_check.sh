#!/usr/bin/env bash
# One short GPU session: the GPU tests, then the benchmark's done-when cases, each time-boxed, everything
# written under $OUT (default ./.gpu-out) as it is measured, so a run cut short still leaves its figures.
#
#   bash benchmarks/gpu_check.sh                # on a CUDA machine with torch + transformers; diffusers from .whl/
#
# Needs: the diffusers wheel in .whl/ (see docs/gpu.md: `pip download ... -d .whl diffusers==0.42.1`) unless
# diffusers is installed. Budget: about 7 minutes on an H100 (tests ~1.5, model build ~1, cases ~4).
set -uo pipefail
OUT=${OUT:-.gpu-out}
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

echo "== pytest -m gpu"
timeout "${TESTS_S:-200}" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?" | tee -a "$OUT/pytest.txt"
tail -25 "$OUT/pytest.txt"

echo "== bench_gpu"
# The done-when cases first (batch 8: balanced 1 edit, the few-step presets — >= 5x balanced's items/min is the few-step
# target —, off, faithful, balanced 4 edits), then batch 1 for comparison. Few-step presets keep their 4 steps.
timeout "${BENCH_S:-330}" python3 benchmarks/bench_gpu.py --no-peers --floor-batches 1,4,8,16 \
    --cases "${CASES:-balanced:1:8,turbo-balanced:1:8,turbo-faithful:1:8,off:1:8,faithful:1:8,balanced:4:8,balanced:1:1,off:1:1}" \
    > "$OUT/bench.json" 2> "$OUT/bench.log"
echo "bench rc=$?"
grep -v '^\[transformers\]' "$OUT/bench.log" | tail -30
cat "$OUT/bench.json"
