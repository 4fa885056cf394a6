# Yilian (医链). `make run` serves a whole node; `make test` runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT
# `make test` spreads test files over one worker per core (pytest-xdist; tests/workers.py keeps them apart,
# and runs the consortium's multi-node tests on one worker).
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install run cluster dev test test-fast lint bench bench-js migrate seed messages clean

# `make cluster`: a fresh local consortium (node i: $(CLUSTER_DIR)/node-<i>/, web on BASE_PORT+i, peers on BASE_PORT+100+i).
NODES ?= 4
CLUSTER_DIR ?= var/cluster
BASE_PORT ?= 8000

install:
	@scripts/install

migrate: install
	$(PY) manage.py migrate --no-input -v 0

seed: migrate
	$(PY) manage.py seed_demo --quiet-logins

run: seed
	$(PY) manage.py runnode --port $(PORT)

cluster: install
	$(PY) manage.py cluster init --nodes $(NODES) --dir $(CLUSTER_DIR) --base-port $(BASE_PORT)
	$(PY) manage.py cluster run --dir $(CLUSTER_DIR) --base-port $(BASE_PORT)

dev: seed
	EMR_DEBUG=1 $(PY) manage.py runserver $(PORT)

test:
	@scripts/install --test
	EMR_DATA_DIR=$${EMR_DATA_DIR:-$(CURDIR)/var/test} $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	EMR_DATA_DIR=$${EMR_DATA_DIR:-$(CURDIR)/var/test} $(PY) -m pytest $(XDIST) -m "not browser and not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	@for b in bench/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Dev-only: the IPFS reference importer (npm), which bench/dag_bench.py measures beside dag add when present.
bench-js:
	cd bench/js && npm ci --no-audit --no-fund

messages: install
	$(PY) manage.py makemessages -l zh_Hans --ignore=.venv --ignore=var --no-obsolete
	$(PY) manage.py compilemessages -v 0 --ignore=.venv

clean:
	rm -rf var/test staticfiles
