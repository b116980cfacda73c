# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest bench-append bench-commands bench-projections bench-api clean lock

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . \
	  || $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ledger dev

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

bench-append: $(STAMP)
	$(BIN)/python -m benchmarks.bench_append $(BENCH_ARGS)

bench-commands: $(STAMP)
	$(BIN)/python -m benchmarks.bench_commands $(BENCH_ARGS)

bench-projections: $(STAMP)
	$(BIN)/python -m benchmarks.bench_projections $(BENCH_ARGS)

bench-api: $(STAMP)
	$(BIN)/python -m benchmarks.bench_api $(BENCH_ARGS)

# Regenerate the exact pins from the current environment.
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
