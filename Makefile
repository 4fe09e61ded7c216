# Runwire developer commands. Every target bootstraps what it needs from the
# repository alone: a virtual environment from the hash-locked requirements,
# and buf from the npm lock file.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf
BENCH_ARGS ?=

.PHONY: run test lint protos contracts release-contracts bench clean help browser

help:
	@echo "make run      start the whole system on localhost (embedded defaults)"
	@echo "make test     lint, contract checks and the full test suite"
	@echo "make lint     ruff, mypy and buf lint"
	@echo "make protos   regenerate the Python code of protos/"
	@echo "make bench    run the benchmark suite (BENCH_ARGS=... to pass options)"

$(STAMP): requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# buf is pinned exactly in package.json; --no-save installs from the lock without
# rewriting it (`npm ci` would insist on lock entries for every platform's binary).
$(BUF): package.json package-lock.json
	npm install --no-save --no-audit --no-fund --loglevel=error
	touch $(BUF)

run: $(STAMP)
	$(BIN)/runwire up $(RUN_ARGS)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

contracts: $(BUF)
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking --against ../contracts/released.binpb

lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy examples/python
	cd protos && ../$(BUF) lint

# The browser console's tests drive Debian's chromium through Playwright (whose own browser
# downloads do not work offline). Installed here when missing and apt-get can; otherwise
# those tests are skipped with the reason, except in CI, where this fails.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	    && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then \
	    echo "installed Debian's chromium for the browser console tests"; \
	  elif [ -n "$$CI" ]; then echo "make browser: cannot install chromium" >&2; exit 1; \
	  else echo "make browser: chromium is not installed (apt-get install chromium); the browser console tests will be skipped"; fi; }

test: lint contracts browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache

release-contracts: $(BUF)
	cd protos && ../$(BUF) build -o ../contracts/released.binpb
