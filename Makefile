# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv first.
# torch is installed first and pinned (the CPU build this machine kind ships) so that no other
# requirement pulls a multi-GB CUDA build from the registry.

VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raylab demo pipelines/asl_synth.yaml

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	for b in decode select eval_stad score train scale pool; do $(PY) -m benchmarks.$$b | tail -n 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
