# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-terminal test lint typecheck unit docs bench chaos install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the packaging metadata changes (entry points, extras).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# The FastAPI example on 127.0.0.1 against the built-in simulator, state in memory.
demo: $(STAMP)
	$(BIN)/python examples/fastapi_app/demo.py

# The same policies in a terminal, no server.
demo-terminal: $(STAMP)
	$(BIN)/python examples/terminal_demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy src plugins
	$(BIN)/mypy tests/typing

unit: $(STAMP)
	$(BIN)/python -m pytest

# The documentation site (mkdocs.yml): --strict, so a broken link or anchor fails.
docs: $(STAMP)
	@# not --quiet: it hides the warnings --strict counts, and a broken link would pass
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

test: lint typecheck unit docs

# Every benchmarks/bench_*.py, with progress; tables into benchmarks/results.md and docs/performance.md.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/bench_timeout_bulkhead.py

# The chaos, soak and leak suite (tests/chaos), every scenario, with progress; its table goes into
# docs/reliability.md. make test runs only its fast scenarios.
chaos: $(STAMP)
	$(BIN)/python tests/chaos/report.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info plugins/*.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis
