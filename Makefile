# Two entry points: `make demo` (the built-in experiment) and `make test`. Both set up .venv first.
# Exact versions (torch/torchvision pair included) are pinned in constraints.txt; pyproject.toml has ranges.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.synthaug-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/synthaug demo

test: install
	bash scripts/system-packages.sh
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/downstream.py

clean:
	rm -rf runs .pytest_cache
