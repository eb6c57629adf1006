# The two commands of the README: `make demo` and `make test`. Each creates (or reuses) the
# virtual environment in .venv and installs what it needs, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.system-deps

.PHONY: install system-deps demo demo-full test test-slow lint benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; started=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip; \
	$(BIN)/python -m pip install -q -e '.[dev]'; \
	touch $(STAMP); \
	echo "install: $$(( $$(date +%s) - started )) s (the virtual environment in $(VENV))"

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (the demo's fallback dataset and a test source).
system-deps: $(APT_STAMP)

$(APT_STAMP): scripts/system-deps.sh
	bash scripts/system-deps.sh
	@mkdir -p $(VENV) && touch $(APT_STAMP)

# Install time is reported separately from the demo's own (which the demo prints at its end).
demo: install system-deps
	$(BIN)/shelfsight demo

# The demo at the paper's budgets (configs/demo-full.yaml): about an hour on a 2-core CPU.
demo-full: install system-deps
	$(BIN)/shelfsight demo --full

# import-linter holds the architecture (.importlinter: layers, forbidden imports, no cycles, imports inside
# functions included); check_structure.py fails on a module over 400 lines, a function over 60 or a public
# class name defined twice, and prints each offender.
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo .importlinter
	$(BIN)/python scripts/check_structure.py src/shelfsight

test: install system-deps lint
	$(BIN)/python -m pytest

test-slow: install system-deps
	$(BIN)/python -m pytest -m slow

benchmark: install system-deps
	$(BIN)/python benchmarks/extraction.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
