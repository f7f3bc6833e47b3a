# Two commands on a fresh machine: `make run` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test unit lint typecheck sanitize bench gen-commands clean

$(STAMP): pyproject.toml setup.py proxy/_speedups.c proxy/_inflight.c
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "resproxy needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@$(PY) -m proxy.accel || true  # a C accelerator that did not compile: a visible warning
	touch $(STAMP)

setup: $(STAMP)
	@tools/system-deps.sh redis-server redis-tools

run: setup
	@PY=$(PY) tools/run-local.sh

# Lint and types, the unit suite on the pure-Python twins, then everything on the C build.
test: $(STAMP)
	@tools/system-deps.sh redis-server redis-tools nutcracker
	$(MAKE) --no-print-directory lint typecheck
	RESPROXY_PURE=1 $(PY) -m pytest -q -p no:cacheprovider tests/unit
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

# The C-backed unit tests with the C accelerators built under AddressSanitizer (a copy of the
# tree in build/sanitize, so the installed build is left alone).
sanitize: $(STAMP)
	@PY=$(abspath $(PY)) tools/sanitize.sh

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
