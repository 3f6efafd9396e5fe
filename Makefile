# Two commands do everything on a fresh machine (see README):
#   make demo   set up .venv and run the main job on a small built-in default (no downloads, no GPU)
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
CIFAR ?=

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# The whole pipeline at a tiny scale, every step an ordinary command (see runs/demo/*):
# render + preview, pretrain a tiny model, fine-tune it and a from-scratch twin on real images
# (scikit-learn's bundled handwritten digits; pass CIFAR=path/to/cifar10 for CIFAR-10), report.
demo: setup
	$(PY) -m experiments.demo --out $(OUT) $(if $(CIFAR),--cifar $(CIFAR),)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_render.py

clean:
	rm -rf runs
