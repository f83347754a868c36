# One venv for everything; `make demo` and `make test` create it on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench soak install clean services

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: no Redis, no PostgreSQL.
demo: $(STAMP)
	$(BIN)/drift-responder demo

# Unit and integration tests. Integration tests need Redis and PostgreSQL (see README); `.ci/run`
# starts them when they are not running.
test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider --ignore=tests/soak

lint: $(STAMP)
	$(BIN)/ruff check responder bots tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Each benchmark prints its figures and writes its section of bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/runs.py
	$(BIN)/python bench/prompt.py
	$(BIN)/python bench/evidence.py

# Long fault suites (worker kills, Redis and PostgreSQL restarts, API storms); results are
# recorded in bench/SOAK.md. Also what `make test` leaves to it (tests/support/variants.py): the
# PostgreSQL + Redis variants of slow end-to-end tests (marked `soak`) and the property tests
# with all their examples.
soak: $(STAMP)
	DRIFT_TEST_SOAK=1 $(BIN)/pytest -q -p no:cacheprovider -m "soak or hypothesis" tests

clean:
	rm -rf $(VENV) .drift .pytest_cache .mypy_cache .ruff_cache
