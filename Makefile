# The two commands: `make demo` and `make test`. Each makes .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Installs come from the lock (requirements/*.txt: exact versions with hashes, written by uv
# from pyproject.toml's ranges); `make lock` refreshes it after pyproject.toml changes.
# uv rather than pip-tools: one fast command writes every lock, for all platforms at once
# (--universal keeps markers), as plain requirements files that pip itself installs.
LOCK := requirements/dev.txt
RUNTIME_LOCK := requirements/runtime.txt
# pip itself, first into every venv (requirements/pip.in says why).
PIP_LOCK := requirements/pip.txt
# The Celery side of `make bench-peers`: its own lock, installed in its own venv only.
PEERS_LOCK := bench/peers/requirements.txt

.PHONY: install demo test lint bench bench-peers clean lock audit-deps release console-assets

install: $(STAMP)

# --no-build-isolation: setuptools and setuptools-scm come from the lock too, not a download.
$(STAMP): pyproject.toml $(LOCK) $(PIP_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The runtime and build sets are subsets of the dev one, at the same versions (--constraint).
# Keeps every pin already in the lock and resolves only what is new or no longer fits;
# `make lock UPGRADE=1` moves everything to the newest versions pyproject.toml allows.
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--no-header --annotation-style line $(if $(UPGRADE),--upgrade)
# Needs only uv (so a lock that no longer installs can still be remade), not the lock itself.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	mkdir -p requirements
	$(UV_COMPILE) pyproject.toml --extra dev -o $(LOCK)
	$(UV_COMPILE) pyproject.toml --extra all --constraint $(LOCK) -o $(RUNTIME_LOCK)
	$(UV_COMPILE) requirements/build.in --constraint $(LOCK) -o requirements/build.txt
	$(UV_COMPILE) requirements/pip.in --constraint $(LOCK) -o $(PIP_LOCK)
	$(UV_COMPILE) $(PEERS_LOCK:.txt=.in) -o $(PEERS_LOCK)

# Known vulnerabilities in the locked set (PyPI's advisory data). Fails on one that has a
# fix; an advisory service out of reach is reported as "not checked" and does not fail.
audit-deps: $(STAMP)
	$(BIN)/python -m release.audit_deps $(LOCK)

# dist/: wheel, sdist, the CycloneDX SBOM of the runtime lock, SLSA provenance, SHA256SUMS.
DIST ?= dist
release: $(STAMP)
	$(BIN)/python -m release.build --out $(DIST)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# Four workers on two cores: most tests wait on real processes, sockets and PostgreSQL, so
# two per core keep both busy (pytest-xdist); worksteal evens out the long end-to-end cases.
TEST_WORKERS ?= 4
# The PostgreSQL-restart fault test restarts the machine's one server, which would break
# the other workers' connections: it runs alone, after the rest.
# Failures are printed as Python prints them (--tb=native): pytest's own format parses the
# failing test's source, and on CPython 3.11.7 that raised "SystemError: AST constructor
# recursion depth mismatch" for some failures, which killed the worker and hid which test
# failed.
TEST_FLAGS ?= --tb=native
test: $(STAMP)
	$(BIN)/pytest -q $(TEST_FLAGS) -n $(TEST_WORKERS) --dist worksteal --durations=15 -m "not pg_restart"
	$(BIN)/pytest -q $(TEST_FLAGS) -m pg_restart

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# `make bench`: every benchmark once, one JSON line each (how to read them: docs/benchmarks.md).
# BENCH_PG is a PostgreSQL the replica comparison may make (and drop) two schemas in;
# empty skips that comparison. About 10 minutes on 2 cores.
BENCH_PG ?= postgresql://postgres@127.0.0.1:5432/test
BENCH_PSQL ?= psql
bench: $(STAMP)
	@set -e; T="$(BIN)/tether bench"; OUT=$$(mktemp -d); S="bench_$$$$"; \
	field() { $(BIN)/python -c 'import json, sys; print(json.loads(sys.stdin.readlines()[-1])[sys.argv[1]])' "$$1"; }; \
	cleanup() { if [ -n "$(BENCH_PG)" ]; then $(BENCH_PSQL) "$(BENCH_PG)" -qc "DROP SCHEMA IF EXISTS $${S}_1 CASCADE; DROP SCHEMA IF EXISTS $${S}_2 CASCADE" >/dev/null 2>&1 || true; fi; rm -rf "$$OUT"; }; \
	trap cleanup EXIT; uptime >&2; \
	echo "# (a) 5 simulated delegates, SQLite, saturated" >&2; \
	$$T --delegates 5 --tasks 5000 --concurrency 100 | tee "$$OUT/a"; \
	echo "# (b) 500 simulated delegates, saturated: no fan-out collapse" >&2; \
	$$T --delegates 500 --tasks 5000 --concurrency 100 | tee "$$OUT/b"; \
	A=$$(field tasks_per_s < "$$OUT/a"); B=$$(field tasks_per_s < "$$OUT/b"); \
	$(BIN)/python -c 'import json, sys; five, many = map(float, sys.argv[1:]); print(json.dumps({"bench": "delegates", "five_delegates_tasks_per_s": five, "five_hundred_delegates_tasks_per_s": many, "ratio": round(many / five, 2)}))' "$$A" "$$B"; \
	echo "# (c) 50 delegates paced at 200 tasks/s: latency below saturation" >&2; \
	$$T --delegates 50 --tasks 4000 --concurrency 100 --rate 200; \
	echo "# (d) polling delegates, at the same rate" >&2; \
	$$T --delegates 50 --tasks 4000 --concurrency 100 --rate 200 --mode poll; \
	echo "# (e) 20,000 idle delegates for 30 s (fewer where the open-files limit is lower): memory and CPU" >&2; \
	H=$$(ulimit -Hn); N=20000; if [ "$$H" != unlimited ] && [ $$((H - 200)) -lt $$N ]; then N=$$((H - 200)); fi; \
	$$T --delegates $$N --idle 30; \
	if [ -n "$(BENCH_PG)" ]; then \
	  $(BENCH_PSQL) "$(BENCH_PG)" -qc "CREATE SCHEMA $${S}_1; CREATE SCHEMA $${S}_2"; \
	  echo "# (f) one replica, then two, on PostgreSQL" >&2; \
	  $$T --delegates 50 --tasks 3000 --concurrency 100 --database "$(BENCH_PG)?search_path=$${S}_1" | tee "$$OUT/e1"; \
	  $$T --delegates 50 --tasks 3000 --concurrency 100 --replicas 2 --database "$(BENCH_PG)?search_path=$${S}_2" | tee "$$OUT/e2"; \
	  ONE=$$(field tasks_per_s < "$$OUT/e1"); TWO=$$(field tasks_per_s < "$$OUT/e2"); \
	  $(BIN)/python -c 'import json, sys; one, two = map(float, sys.argv[1:]); print(json.dumps({"bench": "replicas", "one_replica_tasks_per_s": one, "two_replicas_tasks_per_s": two, "ratio": round(two / one, 2)}))' "$$ONE" "$$TWO"; \
	fi; \
	echo "# (g) two real tether-delegate processes running true, then one task at a time" >&2; \
	$$T --real-delegates 2 --tasks 2000 --concurrency 50; \
	$$T --real-delegates 2 --tasks 200 --sequential; \
	echo "# (h) masking: 1,000 secrets over 50 MiB of log text" >&2; \
	$$T --masker --secrets 1000 --megabytes 50; \
	echo "# (i) 8 readers at once of a 20,000-line log of 16 KiB lines: manager memory, /healthz" >&2; \
	$$T --log-reads --readers 8 --lines 20000 --line-bytes 16384; \
	uptime >&2

# `make bench-peers`: Tether against Celery with Redis, the same job in the same run (how to
# read it: docs/benchmarks.md). Celery lives in a venv of its own, from its own hashed lock;
# the Redis is one the run starts on a free loopback port. About 2 minutes on 2 cores.
PEERS_VENV ?= .bench-peers
REDIS_SERVER ?= redis-server
$(PEERS_VENV)/.installed: $(PEERS_LOCK) $(PIP_LOCK)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --require-hashes -r $(PIP_LOCK)
	$(PEERS_VENV)/bin/python -m pip install --quiet --require-hashes -r $(PEERS_LOCK)
	touch $@

bench-peers: $(STAMP) $(PEERS_VENV)/.installed
	$(BIN)/python bench/peers/compare.py --peer-python $(PEERS_VENV)/bin/python \
		--tether $(BIN)/tether --redis-server $(REDIS_SERVER)

clean:
	rm -rf $(VENV) $(PEERS_VENV) .demo .mypy_cache .ruff_cache .pytest_cache dist

# The console's vendored JavaScript (manager/console/static/assets.json): take the pinned
# version again from the npm registry, check it against the recorded integrity, and check
# the vendored files' hashes. VERSION=2.0.12 moves the pin.
console-assets: $(STAMP)
	$(VENV)/bin/python -m manager.console.assets fetch $(VERSION)
	$(VENV)/bin/python -m manager.console.assets check
