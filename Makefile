# Everything installs into .venv with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
CONFIG ?= examples/default.yaml

.PHONY: setup serve test lint bench clean

$(STAMP): pyproject.toml constraints.txt plugins/hotswap-openvino/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt pip==26.3 setuptools==84.2.1
	# torch first and exactly: a looser spec would pull a multi-GB CUDA build.
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	$(PIP) install -c constraints.txt --no-build-isolation -e plugins/hotswap-openvino
	touch $@

setup: $(STAMP)

serve: setup
	$(VENV)/bin/hotswap serve --config $(CONFIG)

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
