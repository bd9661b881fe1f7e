# esikit: `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.esikit-installed
# CPU build of torch, pinned: a plain `torch` pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-all demo bench template clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

# Everything, slow tests included.
test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

demo: setup
	$(BIN)/python -m esikit demo

bench: setup
	$(BIN)/python benchmarks/run_all.py

# DeepSIF's template end to end (resumable): make template SIZE=tiny|small|full OUT=...
SIZE ?= small
OUT ?= runs/template-$(SIZE)
template: setup
	$(BIN)/python -m esikit template $(OUT) --size $(SIZE) --anatomy ../shared/deepsif_anatomy

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
