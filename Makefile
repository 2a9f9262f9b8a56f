# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and validate the zoo's default model on the embedded dataset
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench gpu-check
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/nfzoo-validate

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python eval/bench.py

# The GPU check (docs/speed.md, "GPU check"): runs with the machine's own python3 and torch, no .venv.
OUT ?= gpu-check-out
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$${PYTHONPATH:+$$PYTHONPATH:}. $(PYTHON) eval/gpu_check.py --out $(OUT) $(GPU_CHECK_ARGS)
