# Two entry points for a fresh machine: `make demo` and `make test`.
#
# Python: the first of $(PYTHONS) that is 3.11-3.13 (the pinned numpy and pandas need 3.11+),
# or PY=/path/to/python.
# torch is installed first, so no dependency can pull another build:
#   - a local CPU wheel when one is there (TORCH_WHEEL=path, default: $(WHEEL_DIR)'s wheel for
#     this Python), else
#   - torch==$(TORCH_VERSION) by name from the package index; TORCH_INDEX=URL picks the wheel
#     index (https://download.pytorch.org/whl/cpu for CPU only, .../whl/cu128 for CUDA 12.8).
# Then everything else at the exact versions in constraints.txt.
PYTHONS ?= python3.11 python3.12 python3.13 python3
PY_SUPPORTED := 3.11 3.12 3.13
VERSION_PROBE := -c 'import sys; print("%d.%d" % sys.version_info[:2])'
ifeq ($(origin PY),undefined)
PY := $(shell for p in $(PYTHONS); do \
	  v=$$($$p $(VERSION_PROBE) 2>/dev/null) || continue; \
	  if echo " $(PY_SUPPORTED) " | grep -q " $$v "; then echo "$$p"; break; fi; done)
endif
PY_VERSION := $(if $(PY),$(shell $(PY) $(VERSION_PROBE) 2>/dev/null))
PY_TAG := cp$(subst .,,$(PY_VERSION))

TORCH_VERSION := 2.13.0
WHEEL_DIR ?= /opt/wheels
TORCH_WHEEL ?= $(firstword $(wildcard $(WHEEL_DIR)/torch-$(TORCH_VERSION)+cpu-$(PY_TAG)-$(PY_TAG)-*.whl))
TORCH_INDEX ?=
TORCH_REQUIREMENT := $(if $(TORCH_WHEEL),"$(TORCH_WHEEL)",$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )"torch==$(TORCH_VERSION)")

VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PY)" || { echo "no Python $(PY_SUPPORTED) found among: $(PYTHONS); set PY=/path/to/python3.11"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_REQUIREMENT)
	$(BIN)/pip install -q -c constraints.txt -e ".[test,serve,ray]"
	touch $(STAMP)

demo: install
	$(BIN)/icg demo --out demo-out

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-out
