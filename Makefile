# roadmap: set-up, tests, demo, benchmarks.
# TORCH_SPEC picks the torch build installed before the package. CPU default; for a GPU machine:
#   make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
WORK ?= demo-work

.PHONY: install test test-all demo bench bench-ablation lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,cluster]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

lint: install
	$(BIN)/ruff check .

demo: install
	bash sample_data/demo.sh $(WORK)

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/train_pipeline.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/vectorize.py
	$(BIN)/python bench/scale.py

bench-ablation: install
	$(BIN)/python bench/ablation.py

clean:
	rm -rf $(WORK) .pytest_cache build *.egg-info
