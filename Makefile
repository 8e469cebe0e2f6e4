# Everything a fresh machine needs comes from here: only Python 3.11+ and the package
# registries are assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# uv fills each virtualenv in seconds where pip takes ~45 s, and `make test` fills three
# (README, "Development"); pip puts it in the main virtualenv first. --native-tls: the
# system's certificates, as pip uses them (a proxy's CA included).
UV     := $(BIN)/uv
UV_PIP := $(UV) pip install --quiet --native-tls
# The newest DuckDB 1.x CLI, in a venv of its own (its `duckdb` binary must not meet the
# Python duckdb 2.x module): tests/test_duckdb_cli.py reads our files with it.
CLI    := .venv-cli/bin/duckdb

# The lake extra pins the DuckDB release its extension wheels are built for, so the lake
# tests run in a virtualenv of their own, against a PostgreSQL server they start.
LAKE   := .venv-lake
LAKE_STAMP := $(LAKE)/.installed-stamp

.PHONY: install lint test test-lake demo bench bench-peer soak clean .venv-cli

$(UV):
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.9'

$(STAMP): pyproject.toml | $(UV)
	$(UV_PIP) --python $(BIN)/python -e '.[dev,charts]'
	touch $(STAMP)

install: $(STAMP)

$(LAKE_STAMP): pyproject.toml | $(UV)
	test -x $(LAKE)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(LAKE)
	$(UV_PIP) --python $(LAKE)/bin/python -e '.[dev,charts,lake]'
	touch $(LAKE_STAMP)

$(CLI): | $(UV)
	test -x .venv-cli/bin/python || $(UV) venv --quiet --python $(PYTHON) .venv-cli
	$(UV_PIP) --python .venv-cli/bin/python 'duckdb-cli>=1.5,<2'
	test -x $(CLI)

.venv-cli: $(CLI)

lint: $(STAMP)
	$(BIN)/ruff check rcs_sync rcs_sim tests bench scripts
	$(BIN)/ruff format --check rcs_sync rcs_sim tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

# The two runs at once, the main one on two workers (pytest-xdist): the suites are mostly
# waits (processes starting, PostgreSQL, the simulator's latency; ~1.1 cores busy run
# serially), so side by side they take ~the longer one's time rather than the sum
# (README, "Development"). The lake run's output follows the main run's.
test: lint $(CLI) $(LAKE_STAMP)
	@$(MAKE) --no-print-directory test-lake > .test-lake.log 2>&1 & lake=$$!; \
	$(BIN)/pytest -n 2; main=$$?; \
	wait $$lake; status=$$?; cat .test-lake.log; rm -f .test-lake.log; \
	test $$main -eq 0 && test $$status -eq 0

# The suites marked `kinds` again with `[warehouse] kind = "ducklake"`, and the lake's own.
test-lake: $(LAKE_STAMP)
	RCS_SYNC_TEST_KIND=ducklake $(LAKE)/bin/pytest -m 'lake or kinds'

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP) $(LAKE_STAMP)
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/snapshot_bench.py
	$(BIN)/python bench/analytics_bench.py
	$(BIN)/python bench/upsert_bench.py
	$(BIN)/python bench/channels_bench.py
	$(LAKE)/bin/python bench/lake_bench.py

# The peer (dlt) lives in a virtualenv of its own, so its dependencies never mix with ours.
PEER := .venv-peer
$(PEER)/.installed-stamp: | $(UV)
	test -x $(PEER)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(PEER)
	$(UV_PIP) --python $(PEER)/bin/python 'dlt[duckdb]' requests
	touch $@

bench-peer: $(STAMP) $(PEER)/.installed-stamp
	PEER_PYTHON=$(PEER)/bin/python $(BIN)/python bench/peer.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(PEER) $(LAKE) .venv-cli demo .pytest_cache .mypy_cache .ruff_cache
