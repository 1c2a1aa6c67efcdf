# The two entry points: `make demo` and `make test`. Everything else is set-up they depend on.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test lint typecheck data mcu-tools install baselines clean

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

# the Cortex-M4 cross compiler, newlib and QEMU for the C exporter's emulated-MCU test (skipped when absent)
MCU_PKGS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
mcu-tools:
	@if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 || ! command -v qemu-system-arm >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing the Cortex-M4 toolchain and emulator (Debian packages $(MCU_PKGS))"; \
	    (apt-get install -y -qq --no-install-recommends $(MCU_PKGS) || (apt-get update -qq && apt-get install -y -qq --no-install-recommends $(MCU_PKGS))) >/dev/null \
	      || echo "warning: could not install $(MCU_PKGS); the Cortex-M4 tests will be skipped"; \
	  else \
	    echo "arm-none-eabi-gcc/qemu-system-arm missing: install $(MCU_PKGS) (the Cortex-M4 tests are skipped without them)"; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) data mcu-tools lint typecheck
	$(BIN)/python -m pytest

demo: $(STAMP) data
	$(BIN)/python -m deepshrink demo

baselines: $(STAMP) data
	$(BIN)/deepshrink train lenet300 --dataset fashion-mnist --epochs 10 --out benchmarks/baselines/lenet300-fmnist.pt
	$(BIN)/deepshrink train lenet5 --dataset fashion-mnist --epochs 10 --out benchmarks/baselines/lenet5-fmnist.pt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
