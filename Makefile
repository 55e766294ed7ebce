# The two commands a newcomer needs: `make demo` (an RLM run end to end) and `make test`.
# Both work in a project virtual environment (.venv, made on first use), never in the system Python,
# so they also work where that Python is externally managed (PEP 668: Debian, Ubuntu).
BOOTSTRAP_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: install test demo

$(PYTHON):
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

# Reinstalled when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Brings up a Docker engine and the kernel image where it can (see .ci/setup-docker.sh), then runs
# every test. Docker tests skip only when no engine answers and CI is not set.
test: install
	PYTHON=$(PYTHON) bash .ci/setup-docker.sh
	bash .ci/setup-browser.sh
	$(PYTHON) -m pytest -ra --durations=15

demo: install
	$(PYTHON) -m rlm.demo
