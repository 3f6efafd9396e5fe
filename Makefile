# Two commands do everything on a fresh machine (see README):
#   make demo   set up .venv and run the main job on a small built-in default (no downloads, no GPU)
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
CIFAR ?=

.PHONY: setup demo test bench gpu-wheels clean

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
	$(PY) -m pytest -q --durations=15

bench: setup
	$(PY) benchmarks/bench_render.py

# What the GPU machine's python3 lacks, as cp312 wheels, plus a copy of the shared CIFAR-10 subset for
# the fine-tune step: carried there as gpu_carry/ (docs/benchmarks.md, "GPU check"). The last install
# checks, here, that the wheels resolve for Python 3.12 from the folder alone.
GPU_WHEELS := webdataset==1.0.2 braceexpand==0.1.7 isal==1.9.1
GPU_PLATFORM := --only-binary :all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
gpu-wheels: setup
	rm -rf gpu_carry/wheels gpu_carry/.resolve-check && mkdir -p gpu_carry
	$(PY) -m pip download -q --no-deps $(GPU_PLATFORM) -d gpu_carry/wheels $(GPU_WHEELS)
	$(PY) -m pip install -q --no-index --no-deps --find-links gpu_carry/wheels $(GPU_PLATFORM) \
		--target gpu_carry/.resolve-check webdataset braceexpand isal
	rm -rf gpu_carry/.resolve-check
	if [ -d ../shared/datasets/cifar10-subset ]; then rm -rf gpu_carry/cifar10-subset && \
		cp -r ../shared/datasets/cifar10-subset gpu_carry/ && chmod -R u+w gpu_carry/cifar10-subset; fi
	du -sh gpu_carry/*

clean:
	rm -rf runs
