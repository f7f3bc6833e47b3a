# Two commands on a fresh machine: `make run` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test unit typecheck bench gen-commands clean

$(STAMP): pyproject.toml setup.py proxy/_speedups.c proxy/_inflight.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "resproxy needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)
	@tools/system-deps.sh redis-server redis-tools

run: setup
	@PY=$(PY) tools/run-local.sh

test: $(STAMP)
	@tools/system-deps.sh redis-server redis-tools nutcracker
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	@tools/system-deps.sh redis-server redis-tools nutcracker
	$(PY) bench/run.py

# Regenerate proxy/command_data.py from a real redis-server's COMMAND output.
gen-commands: $(STAMP)
	@tools/system-deps.sh redis-server redis-tools
	$(PY) tools/gen_commands.py

clean:
	rm -rf $(VENV) build *.egg-info
