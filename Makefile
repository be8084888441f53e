# The two set-up commands of the README, plus the benchmark.
#   make demo   -- install into $PROFILESTREAM_VENV (default .venv) and run the embedded demo
#   make test   -- install, start a real Kafka broker, lint, type-check and run the whole suite
PROFILESTREAM_VENV ?= .venv
PYTHON ?= python3
BIN := $(PROFILESTREAM_VENV)/bin
PYTEST_ARGS ?=
# Bytewax's FileSink writes deltas as text: make it UTF-8 (Chinese labels) whatever the locale.
export PYTHONUTF8 := 1

.PHONY: venv demo test bench

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(PROFILESTREAM_VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'

demo: venv
	$(BIN)/profilestream demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python benchmarks/flow_bench.py
	$(BIN)/python benchmarks/embed_bench.py
	$(BIN)/python benchmarks/sentiment_bench.py
