# Two entry points for a fresh machine (see README.md):
#   make demo   set up .venv and validate the shipped demo checkpoint on the shipped Fashion-MNIST sample
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

DEMO_DATA := examples/fashion_mnist_sample
DEMO_PLOT := runs/demo/top1_vs_images_per_sec.png

# The demo checkpoint loads through the normal pretrained path (its manifest entry names the file
# shipped in the package and its sha256) and is checked against the manifest's recorded accuracy.
demo: setup
	$(VENV)/bin/nfzoo-validate --model nfnet_mini.nfzoo_fmnist --pretrained --data-dir $(DEMO_DATA) \
		--class-map $(DEMO_DATA)/class_map.txt --workers 0 --check --plot $(DEMO_PLOT)

test: setup
	$(VENV)/bin/python -m pytest -q

# The speed comparison with timm (docs/speed.md, "Benchmark"); BENCH_ARGS: its flags.
BENCH_ARGS ?=
bench: setup
	$(VENV)/bin/python -m benchmarks.bench $(BENCH_ARGS)

# The GPU check (docs/speed.md, "GPU check"): runs with the machine's own python3 and torch, no .venv;
# on a machine without a GPU, a CPU dry run.
OUT ?= gpu-check-out
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$${PYTHONPATH:+$$PYTHONPATH:}. $(PYTHON) -m benchmarks.gpu_check --out $(OUT) $(GPU_CHECK_ARGS)
