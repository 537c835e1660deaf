# canarywatch: every target sets up what it needs (virtual environment, broker, API server).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?=
export PYTHONUNBUFFERED := 1

.PHONY: venv lint typecheck unit test demo bench bench-decisions clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check streams agents tests bench
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/canarywatch demo $(if $(DURATION),--duration $(DURATION),)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
