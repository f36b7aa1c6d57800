# Every target sets itself up: a fresh clone needs only `make test` or `make search`.
# VENV=... puts the virtual environment elsewhere; PYTHON=... picks the interpreter that makes it.
VENV ?= .venv
PYTHON ?= python3

STAMP := $(VENV)/.installed

.PHONY: install test lint search clean

# Reinstalls whenever pyproject.toml changes. torch and its CUDA packages make the first
# install take a few minutes and about 6 GB.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The main job. For now it lists the necks; the search itself arrives with the search issue.
search: $(STAMP)
	$(VENV)/bin/nasfpn necks list
	@echo "note: 'nasfpn search' is not implemented yet; it arrives with the search issue."

# Removes what runs/ collected (keeps runs/README.md); leaves the venv alone.
clean:
	find runs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
