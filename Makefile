# Every target sets itself up: a fresh clone needs only `make test` or `make search`.
# VENV=... puts the virtual environment elsewhere; PYTHON=... picks the interpreter that makes it.
VENV ?= .venv
PYTHON ?= python3

STAMP := $(VENV)/.installed

.PHONY: install browser postgres test lint search clean

# Reinstalls whenever pyproject.toml changes. torch and its CUDA packages make the first
# install take a few minutes and about 6 GB.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[dev]"
	touch $@

install: $(STAMP)

# The dashboard test drives Debian's chromium through its chromedriver: installed here, once,
# when either is missing (apt-get as root, through sudo otherwise).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
		echo "installing Debian's chromium and chromium-driver for the dashboard test"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver fonts-liberation; \
	fi

# The PostgreSQL tests start a throwaway server of Debian's PostgreSQL (initdb, pg_ctl): installed
# here, once, when missing.
postgres:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; else \
		echo "installing Debian's PostgreSQL server for the shared-study tests"; \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; \
	fi

# Style and types first (a minute), then the suite: a tree that fails them fails the test command too.
test: lint browser postgres
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The main job: the embedded dataset, then a NAS-FPN-space search with the RL controller on
# the default proxy (about 20 minutes on 2 CPU cores). Run again, it resumes or shows the result.
SEARCH_NAME ?= make-search
SEARCH_TRIALS ?= 20
search: $(STAMP)
	$(VENV)/bin/nasfpn data synth
	$(VENV)/bin/nasfpn search --name $(SEARCH_NAME) --space nasfpn --controller rl --trials $(SEARCH_TRIALS)

# Removes what runs/ collected (keeps runs/README.md); leaves the venv alone.
clean:
	find runs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
