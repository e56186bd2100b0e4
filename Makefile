# Thin wrappers. Everything runs from the project's own .venv.
PY ?= python3.11
VENV := .venv
PLOTS_TEMPLATE := .dvc/offline_plots.html
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup browser test test-fast lint repro exp check-data bench bench-accuracy review dashboard screenshot

setup: $(BIN)/chimuffin browser $(PLOTS_TEMPLATE)  ## fresh machine: venv + pinned deps + Chromium for UI tests + offline plots

$(BIN)/chimuffin: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# `dvc plots show/diff` page template with Vega inlined (.dvc/config names it): works offline
$(PLOTS_TEMPLATE): $(BIN)/chimuffin
	$(BIN)/chimuffin plots-template --output $@

browser:  ## Debian's Chromium for the review-page tests (Playwright drives it; never downloads one)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium for the UI tests (they skip without it)"; fi; }

# pytest workers: one per core this process may use (a container's CPU quota included)
WORKERS = $$($(BIN)/python -c 'from chimuffin.runtime import available_cores; print(available_cores())')

test:  ## lint + the whole suite (what CI runs), one worker per core
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal

test-fast:  ## unit tests only
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal -m "not slow"

lint:
	$(BIN)/ruff check .

repro:  ## the main job: the whole pipeline on the data named in params.yaml
	$(BIN)/dvc repro

check-data:  ## names DVC cannot hash in prepare.data_dir (run before `make repro` on new data)
	$(BIN)/chimuffin check-data

# The experiment table, short: name, date, the params that differ between the rows shown, and
# the saved model's validation/test accuracy (best validation first). Everything else (deps
# hashes, unchanged params, other metrics) is dropped. Markdown by default: DVC's boxed table
# replaces columns with "..." when the terminal is narrow or stdout is a pipe, Markdown never
# cuts one. EXP_FORMAT= (empty) gives the boxed table, --csv CSV; EXP_ARGS adds options, e.g. -A.
EXP_KEEP := ^(Experiment|Created|val\.accuracy|test\.accuracy)$$
EXP_PARAMS := base|sample|prepare|clean|train|evaluate|suggest|tlc
EXP_FORMAT ?= --md
exp:  ## short experiment table: params that differ + saved-model val/test accuracy
	@$(BIN)/dvc exp show --no-pager --only-changed --keep '$(EXP_KEEP)' \
	  --drop '^(?!($(EXP_PARAMS))\.)' --sort-by metrics/eval/metrics.json:val.accuracy \
	  --sort-order desc --precision 4 $(EXP_FORMAT) $(EXP_ARGS)

bench:  ## training / evaluation img/s: reference pipeline vs chimuffin (quiet machine)
	$(BIN)/python benchmarks/train_throughput.py

bench-accuracy:  ## reference vs fast recipe on the real data: wall time and validation accuracy
	$(BIN)/python benchmarks/time_to_accuracy.py

review:  ## the offline review page on http://127.0.0.1:8765 (needs `make repro` first)
	$(BIN)/chimuffin review

screenshot:  ## docs/review-page.png: the review page in headless Chromium (after `make repro`)
	$(BIN)/python docs/screenshot.py

dashboard:  ## 3LC Object Service on 127.0.0.1:5015 for the hosted Dashboard (Ctrl-C stops it)
	$(BIN)/chimuffin dashboard
