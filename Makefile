# The two commands of the README:
#   make demo   - the main job end to end (Prefect + Ray + Parquet + MLflow) on bundled photos
#   make test   - the test suite
# Both create .venv on first use, with torch pinned to the CPU wheel on this disk (no CUDA download).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench install clean-state

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tight-pipeline demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# Units without services or end-to-end runs (tests marked slow are left out): minutes, for the edit loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=10

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_pipeline.py

clean-state:
	rm -rf .tight-pipeline
