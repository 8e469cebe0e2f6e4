# Everything a fresh machine needs comes from here: only Python 3.11+ and the package
# registries are assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lint test demo bench bench-peer soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,charts]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rcs_sync rcs_sim tests bench scripts
	$(BIN)/ruff format --check rcs_sync rcs_sim tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/snapshot_bench.py
	$(BIN)/python bench/analytics_bench.py
	$(BIN)/python bench/upsert_bench.py

# The peer (dlt) lives in a virtualenv of its own, so its dependencies never mix with ours.
PEER := .venv-peer
$(PEER)/.installed-stamp:
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -m pip install --quiet 'dlt[duckdb]' requests
	touch $@

bench-peer: $(STAMP) $(PEER)/.installed-stamp
	PEER_PYTHON=$(PEER)/bin/python $(BIN)/python bench/peer.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) $(PEER) demo .pytest_cache .mypy_cache .ruff_cache
