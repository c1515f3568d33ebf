# The two commands of the README:
#   make demo   - the main job end to end (Prefect + Ray + Parquet + MLflow) on bundled photos
#   make test   - the test suite
# Both create .venv on first use, with torch pinned to the CPU wheel on this disk (no CUDA download).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint drills bench benchmark install clean-state

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tight-pipeline demo

# The linter (ruff: configured in pyproject.toml); CI runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Everything but the drills (~7 minutes on 2 cores: 420 s at 91be9e8); CI runs lint, this, then `make drills`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not drill" --durations=15

# Fault, deployment and browser drills: a killed driver, a killed actor, an S3 restart mid-run, a separately started
# Ray cluster, the image's install, the topology, the GPU lease script on CPU, the Prefect/MLflow UIs in Chromium
# (up to minutes each; CI runs them after `make test`).
drills: $(STAMP)
	$(PY) -m pytest -q -m drill --durations=10

# Units without services, end-to-end runs or long computations (tests marked slow are left out), for the edit loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu and not drill" --durations=10

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_pipeline.py

# The edit benchmark (PIE-Bench protocol) on a PIE-format set of held-out demo shots, peers side by side
# (about 8 minutes on 2 cores; SHOTS=12 cases per edit type). Table, plot and rows under $(BENCH_OUT)/benchmark/.
SHOTS ?= 12
BENCH_OUT ?= .tight-pipeline/benchmark-demo
benchmark: $(STAMP)
	$(VENV)/bin/tight-pipeline bench-set $(BENCH_OUT)/data --shots $(SHOTS)
	$(VENV)/bin/tight-pipeline benchmark --data $(BENCH_OUT)/data --output $(BENCH_OUT)/out --model catalog-demo-clip

clean-state:
	rm -rf .tight-pipeline
