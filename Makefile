# One-command set-up: `make test` and `make demo` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/synthetic
RUNS_DIR ?= runs/demo
REPORT_DIR ?= reports/demo
SAMPLE_DIR ?= ../shared/severstal-sample
SAMPLE_RUNS_DIR ?= runs/sample
SAMPLE_REPORT_DIR ?= reports/sample

.PHONY: venv test test-fast demo sample fixup lint bench clean

venv: $(STAMP)

# The project itself goes in editable (the `severstal` command; tests import the installed package),
# with the extras of the exported backends (OpenVINO, ONNX Runtime: CPU wheels, no torch among their deps).
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x "$(PY)" || "$(PYTHON)" -m venv "$(VENV)"
	"$(PY)" -m pip install --quiet --upgrade pip
	"$(PY)" -m pip install --quiet torch==2.13.0
	"$(PY)" -m pip install --quiet -c constraints.txt -r requirements.txt
	"$(PY)" -m pip install --quiet -c constraints.txt --no-build-isolation -e '.[onnxruntime,openvino]'
	touch "$(STAMP)"

# The whole suite, the exported backends included, on one pytest-xdist worker per core, four at most
# (a worker's memory peaks at about 2.2 GB); tests/conftest.py gives each worker its share of torch's
# threads. Each worker is one process for all the tests it runs: torch is imported once per worker,
# and OpenVINO once crashed a later test of the same process (common_blocks/deploy/onnx_runtimes.py:
# openvino_core says why; a test keeps it fixed). The 15 slowest tests are listed at the end, to see
# where the suite's time goes.
WORKERS := -n auto --maxprocesses 4
test: $(STAMP)
	"$(PY)" -m pytest -q $(WORKERS) --durations=15 tests

# No model training, no exported backend, no child process: the quick check while editing.
test-fast: $(STAMP)
	"$(PY)" -m pytest -q $(WORKERS) -m "not slow and not subprocess" tests

demo: $(STAMP)
	bash scripts/demo.sh "$(PY)" "$(DEMO_DIR)" "$(RUNS_DIR)" "$(REPORT_DIR)"

# The real-data ensemble (configs/ensemble_sample.yaml) on the real sample, end to end; a second run
# resumes where the first stopped.
sample: $(STAMP)
	bash scripts/sample.sh "$(PY)" "$(SAMPLE_DIR)" "$(SAMPLE_RUNS_DIR)" "$(SAMPLE_REPORT_DIR)"

lint: $(STAMP)
	"$(PY)" -m ruff check .
	"$(PY)" -m ruff format --check .

fixup: $(STAMP)
	"$(PY)" -m ruff check --fix .
	"$(PY)" -m ruff format .

bench: $(STAMP)
	"$(PY)" -m benchmarks.bench_startup
	"$(PY)" -m benchmarks.bench_rle
	"$(PY)" -m benchmarks.bench_metric
	"$(PY)" -m benchmarks.bench_loader
	"$(PY)" -m benchmarks.bench_synthetic
	"$(PY)" -m benchmarks.bench_threshold_search
	"$(PY)" -m benchmarks.bench_train --config configs/cpu_small.yaml

clean:
	rm -rf "$(VENV)" .pytest_cache .ruff_cache
