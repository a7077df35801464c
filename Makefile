# Each target bootstraps .venv itself: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[all,test,compat-test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wiremsg demo

lint: $(STAMP)
	$(BIN)/ruff check wiremsg compat tests examples benchmarks
	$(BIN)/ruff format --check wiremsg compat tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q --cov=wiremsg --cov-report=term-missing $(PYTEST_ARGS)
	@# The session is the protocol's core: keep it (nearly) fully covered.
	$(BIN)/python -m coverage report --include='wiremsg/session.py' --fail-under=95

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/amp.py
	$(BIN)/python benchmarks/zmq.py
	$(BIN)/python benchmarks/amqp.py

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache
