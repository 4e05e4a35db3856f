# kumoq: `make run` starts the daemon with policy/init.lua, `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-integration lint fmt bench bench-deps browser-deps redis-deps bench-e2e bench-simulate torture clean docs

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

test: $(STAMP) browser-deps redis-deps
	$(BIN)/pytest

# Headless Chromium renders kumoq harness's HTML report in tests/e2e/test_harness_browser.py.
# Installed with apt-get (as root, or through passwordless sudo) when no Chrome or Chromium is
# on PATH; where apt-get cannot run, say so and go on: the test is then skipped, unless
# KUMOQ_REQUIRE_BROWSER is set (.ci/run sets it), which makes it fail.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable
browser-deps:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: no Chromium, and apt-get cannot run here: install chromium (or set" \
	       "KUMOQ_CHROMIUM) to run the HTML report test" >&2; exit 0; fi; \
	echo "make: installing chromium for the HTML report test (apt-get)"; \
	for pkg in chromium chromium-browser; do \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$pkg >/dev/null 2>&1 && exit 0; \
	  $$sudo apt-get update -q >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$pkg >/dev/null 2>&1 && exit 0; \
	done; \
	echo "make: apt-get could not install chromium; install it to run the HTML report test" >&2

# A real redis-server runs the tests of kumo.configure_redis_throttles (tests/redis_server.py).
# Installed with apt-get as above when missing; where it cannot be, say so and go on: those
# tests are then skipped, unless KUMOQ_REQUIRE_REDIS is set (.ci/run sets it): then they fail.
redis-deps:
	@command -v redis-server >/dev/null 2>&1 && exit 0; test -x /usr/bin/redis-server && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: no redis-server, and apt-get cannot run here: install redis-server to run" \
	       "the redis throttle tests" >&2; exit 0; fi; \
	echo "make: installing redis-server for the redis throttle tests (apt-get)"; \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q redis-server >/dev/null 2>&1 && exit 0; \
	$$sudo apt-get update -q >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q redis-server >/dev/null 2>&1 && exit 0; \
	echo "make: apt-get could not install redis-server; install it to run the redis throttle tests" >&2

test-integration: $(STAMP)
	$(BIN)/pytest -m integration

lint: $(STAMP)
	$(BIN)/ruff check kumoq tests bench tools
	$(BIN)/ruff format --check kumoq tests bench tools
	$(BIN)/mypy kumoq tests bench tools
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format kumoq tests bench tools
	$(BIN)/ruff check --fix kumoq tests bench tools

# Postfix provides the load generator (smtp-source), the final destination (smtp-sink) and the
# peer MTA the bench compares with. Preseeded 'No configuration': the system Postfix stays
# unconfigured and stopped; the bench runs private instances of its own (bench/peers.py).
bench-deps:
	@test -x /usr/sbin/smtp-source -a -x /usr/sbin/postfix || { \
	  echo "make bench: installing postfix (smtp-source, smtp-sink, the peer MTA) with apt-get"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null; }; } || { \
	    echo "make bench: could not install postfix with apt-get; install it by hand" \
	         "(it provides smtp-source and smtp-sink)" >&2; \
	    exit 1; }; }
	@command -v unshare >/dev/null || \
	  echo "make bench: unshare (util-linux) is missing: the bench will run in the host's" \
	       "network namespace"

# The whole suite, as docs/benchmarks.md reports it: the timer structures and scheduled queues,
# then relay, maildir and reception for every spool kind beside Postfix (and Haraka where npm
# reaches its registry), as root inside a private network namespace, then the restart of a
# spool of RESTART_N (1,000,000) messages with RocksDB, and the simulator's 100,000 messages.
# N, REPEAT, SPOOL... are read from the environment (bench/run.py), e.g. make bench N=10000 REPEAT=5.
# --workers 2: the e2e and relay cases also run with `kumoq serve --workers 2`.
bench: $(STAMP) bench-deps bench-simulate
	$(BIN)/python -m bench.timeq
	$(BIN)/python -m bench.scheduling
	$(BIN)/python -m bench.run --with-postfix --with-haraka --with-dkim --with-inject --workers 2
	$(BIN)/python -m bench.restart --spool RocksDB

# kumoq simulate: 100,000 messages over up to 3 virtual days, 5% tempfail and a 421 window
# (docs/benchmarks.md, "Simulator"); the forecast's second line says how long it ran.
bench-simulate: $(STAMP)
	$(BIN)/python -m kumoq simulate --scenario bench/simulate-100k.toml

# Only the SMTP cases beside the peers (no timer, scheduling or restart benchmarks).
bench-e2e: $(STAMP) bench-deps
	$(BIN)/python -m bench.run --with-postfix --with-haraka --with-dkim --with-inject --workers 2

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
