# The two set-up commands of the README: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: venv demo test bench fuzz lint lock clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/plantpulse demo $(ARGS)

test: $(STAMP)
	$(BIN)/pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

# Hostile input beyond the test suite's sample: >= 100,000 generated inputs through decode (bench/fuzz.py).
fuzz: $(STAMP)
	$(BIN)/python -m bench.fuzz $(ARGS)

# The image's pinned dependencies (docker/requirements.lock, with hashes) from pyproject.toml; ARGS=--upgrade: newest.
lock: $(STAMP)
	$(BIN)/pip install --quiet -e ".[lock]" && $(BIN)/python docker/lock.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf .plantpulse .pytest_cache .mypy_cache .ruff_cache
