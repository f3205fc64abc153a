# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so no dependency can pull a multi-GB CUDA build.
	@test -n "$(TORCH_WHEEL)" || { echo "no CPU wheel torch-2.13.0+cpu in /opt/wheels; set TORCH_WHEEL=path"; exit 1; }
	$(BIN)/pip install -q "$(TORCH_WHEEL)"
	# Pinned versions (constraints.txt): the README's numbers come from exactly these.
	$(BIN)/pip install -q -c constraints.txt -e ".[test,serve,ray]"
	touch $(STAMP)

demo: install
	$(BIN)/icg demo --out demo-out

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-out
