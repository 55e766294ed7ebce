# The two commands a newcomer needs: `make demo` (an RLM run end to end) and `make test`.
PYTHON ?= python3

.PHONY: install test demo

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

# Installs the package, brings up a Docker engine and the kernel image where it can (see
# .ci/setup-docker.sh), then runs every test. Docker tests skip only when no engine answers and
# CI is not set.
test: install
	bash .ci/setup-docker.sh
	bash .ci/setup-browser.sh
	$(PYTHON) -m pytest -ra

demo: install
	$(PYTHON) -m rlm.demo
