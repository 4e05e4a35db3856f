# kumoq: `make run` starts the daemon with policy/init.lua, `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-integration lint fmt bench bench-deps bench-e2e torture clean docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The shipped policy listens on $KUMOQ_SMTP_LISTEN and $KUMOQ_HTTP_LISTEN (default 127.0.0.1:2025
# and 127.0.0.1:8000), from the environment or the command line: make run KUMOQ_SMTP_LISTEN=[::1]:2525
run: $(STAMP)
	mkdir -p var
	$(BIN)/kumoq serve --policy policy/init.lua

test: $(STAMP)
	$(BIN)/pytest

test-integration: $(STAMP)
	$(BIN)/pytest -m integration

lint: $(STAMP)
	$(BIN)/ruff check kumoq tests bench
	$(BIN)/ruff format --check kumoq tests bench
	$(BIN)/mypy kumoq tests bench
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format kumoq tests bench
	$(BIN)/ruff check --fix kumoq tests bench

# smtp-source and smtp-sink (Postfix's test tools) drive the end-to-end benchmarks.
bench-deps:
	@test -x /usr/sbin/smtp-source || { \
	  echo "make bench: installing postfix for smtp-source and smtp-sink (apt-get)"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null; }; } || { \
	    echo "make bench: could not install postfix; install it (it provides smtp-source)" >&2; \
	    exit 1; }; }

bench: $(STAMP) bench-deps
	$(BIN)/python -m bench.timeq
	$(BIN)/python -m bench.scheduling
	$(BIN)/python -m bench.run

bench-e2e: $(STAMP) bench-deps
	$(BIN)/python -m bench.run

# kill -9 under load for 20 rounds, a disk-full and a SIGTERM round, per spool kind; then count
# acknowledged, delivered, duplicated and missing mail (docs/reliability.md). Root mounts a tmpfs.
torture: $(STAMP)
	$(BIN)/python -m bench.torture --spool LocalDisk
	$(BIN)/python -m bench.torture --spool SQLite
	$(BIN)/python -m bench.torture --spool RocksDB

docs: $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	$(BIN)/mkdocs build --strict

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache site
