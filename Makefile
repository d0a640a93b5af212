# Two entry points for a newcomer: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the parts need (installed when root and missing): etcd for HA masters;
# runc, the CNI plugins, iptables and busybox-static for containers; a registry for the demo.
DEBIAN_PACKAGES := etcd-server runc containernetworking-plugins iptables docker-registry busybox-static

.PHONY: run test lint typecheck unit bench clean

$(STAMP): pyproject.toml Makefile scripts/install-debian-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(SHELL) scripts/install-debian-packages.sh $(DEBIAN_PACKAGES)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tessera up --agents 3 --demo --registry

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
