# Two commands do all the set-up on a fresh clone: `make demo` (main job) and `make test` (tests).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_DEPS ?= install

.PHONY: demo test lint install bench clean

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the locked dependencies

demo: $(STAMP) ## generate the default world, train and register every model, print where things are
	$(BIN)/aftersales demo

lint: $(STAMP)
	$(BIN)/ruff check features training serving tests benchmarks

test: $(STAMP) ## system programs the suite starts (SYSTEM_DEPS=skip: don't), ruff, the whole test suite
	@[ "$(SYSTEM_DEPS)" = skip ] || bash scripts/system-deps.sh
	$(BIN)/ruff check features training serving tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

bench: $(STAMP) ## print the benchmark figures (not run by CI)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lock: ## re-resolve requirements.lock from pyproject.toml, then the Bento's requirements-serve.lock (needs the registry)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra peers --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile requirements-serve.in -c requirements.lock --python-version 3.11 -o requirements-serve.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
