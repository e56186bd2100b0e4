# Thin wrappers. Everything runs from the project's own .venv.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup browser test test-fast lint repro bench bench-accuracy review dashboard

setup: $(BIN)/chimuffin browser  ## fresh machine: venv + pinned deps + Chromium for UI tests

$(BIN)/chimuffin: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

browser:  ## Debian's Chromium for the review-page tests (Playwright drives it; never downloads one)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium for the UI tests (they skip without it)"; fi; }

test:  ## lint + the whole suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast:  ## unit tests only
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check .

repro:  ## the main job: the whole pipeline on the data named in params.yaml
	$(BIN)/dvc repro

bench:  ## training / evaluation img/s: reference pipeline vs chimuffin (quiet machine)
	$(BIN)/python benchmarks/train_throughput.py

bench-accuracy:  ## reference vs fast recipe on the real data: wall time and validation accuracy
	$(BIN)/python benchmarks/time_to_accuracy.py

review:  ## the offline review page on http://127.0.0.1:8765 (needs `make repro` first)
	$(BIN)/chimuffin review

dashboard:  ## 3LC Object Service on 127.0.0.1:5015 for the hosted Dashboard (Ctrl-C stops it)
	$(BIN)/chimuffin dashboard
