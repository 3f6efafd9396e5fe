# Two commands do everything on a fresh machine (see README):
#   make demo   set up .venv and run the main job on a small built-in default (no downloads, no GPU)
#   make test   set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/fractalgen render --kind multi --n 512 --classes 16 --size 64 --shard-size 128 --out $(OUT)/data
	$(VENV)/bin/fractalgen preview --from $(OUT)/data --n 32 --out $(OUT)/preview.png
	@echo "dataset: $(OUT)/data   preview: $(OUT)/preview.png"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_render.py

clean:
	rm -rf runs
