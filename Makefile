# The two entry points: `make demo` and `make test`. Everything else is set-up they depend on.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint typecheck data install baselines clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned in constraints.txt (a CPU build lies on disk; never let pip pick another)
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,minilm,onnx]'
	touch $(STAMP)

install: $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "Fashion-MNIST missing: install the Debian package dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)"; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) data lint typecheck
	$(BIN)/python -m pytest

demo: $(STAMP) data
	$(BIN)/python -m deepshrink demo

baselines: $(STAMP) data
	$(BIN)/deepshrink train lenet300 --dataset fashion-mnist --epochs 10 --out benchmarks/baselines/lenet300-fmnist.pt
	$(BIN)/deepshrink train lenet5 --dataset fashion-mnist --epochs 10 --out benchmarks/baselines/lenet5-fmnist.pt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
