PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

setup: $(BIN)/difftrain

$(BIN)/difftrain: pyproject.toml requirements/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/cpu.txt -e '.[dev]'
	touch $(BIN)/difftrain

demo: setup
	$(BIN)/difftrain demo

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build src/*.egg-info
