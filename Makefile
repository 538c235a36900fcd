# Two commands set everything up from a fresh clone: `make demo` and `make test`.
# Each creates .venv and installs what it needs first. torch is pinned and
# installed before the project: an unpinned torch requirement on a machine
# without torch would pull the newest multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
CORE := $(VENV)/.core-installed
TESTDEPS := $(VENV)/.test-installed

.PHONY: demo test bench bench-prune bench-bits bench-noise bench-diagnose bench-training bench-sharpbalance bench-diagnose-digits bench-gate gpu-check gpu-check-deps fixtures browser clean

$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TESTDEPS): $(CORE)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(CORE)
	$(BIN)/htsr analyze fixtures/tiny-cnn-trained.pth

# The HTML report test drives headless Chromium from Debian's package; install
# it when we can (root with apt), otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } \
		|| echo "chromium not installed: the browser test will be skipped"

test: $(TESTDEPS) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(TESTDEPS)
	$(BIN)/python benchmarks/run.py

# Prunes a real trained LM (SmolLM2-135M from PyPI) at 50-80% with every allocation and method
# and writes the perplexities to BENCHMARKS.md (about an hour on 2 CPU cores).
bench-prune: $(CORE)
	$(BIN)/python -m pip install --quiet -e ".[bench-prune]"
	$(BIN)/python benchmarks/prune.py

# Quantizes the same LM with RTN at an average of 3 and 4 bits: uniform widths, `htsr allocate bits`
# (alpha-guided, spread 1 and 2) and a per-layer RTN-error baseline, and writes the perplexities to
# BENCHMARKS.md (about 30 minutes on 2 shared CPU cores; 2,048 evaluation tokens, half of bench-prune's).
bench-bits: $(CORE)
	$(BIN)/python -m pip install --quiet -e ".[bench-prune]"
	$(BIN)/python benchmarks/bits.py

# float32 against float64 eigensolvers on every matrix of the fixtures, MiniLM, the LLaMA-shaped
# directory (when `make bench` generated it) and seeded synthetic ones: the float32 guard's noise
# model checked against what really happens (a few minutes on 2 CPU cores).
bench-noise: $(TESTDEPS)
	$(BIN)/python benchmarks/float32_noise.py

# The MD tree paper's diagnosis-accuracy protocol (dataset and scale transfer, Q1 and Q2) on the
# public Model Diagnosis Dataset in ../shared/data/md-tree: measured beside the paper's numbers (seconds).
bench-diagnose: $(TESTDEPS)
	$(BIN)/python -m pip install --quiet -e ".[bench-diagnose]"
	$(BIN)/python benchmarks/diagnose.py

# Deep ensemble vs SAM ensemble vs SharpBalance on scikit-learn's digits: 3 members, same budget,
# 5 seeds (a few minutes on 2 shared CPU cores); the table goes into BENCHMARKS.md.
bench-sharpbalance: $(TESTDEPS)
	$(BIN)/python benchmarks/sharpbalance.py

# The shipped MD tree on a population trained here: MLPs on digits, widths x batch sizes x data
# fractions, 2 seeds each, diagnosed from the features `htsr diagnose MODEL_A MODEL_B` computes and
# scored against the known cause (the dataset's labels from this population's test errors); a few
# minutes on 2 shared CPU cores, the table goes into BENCHMARKS.md.
bench-diagnose-digits: $(TESTDEPS)
	$(BIN)/python benchmarks/diagnose_digits.py

# Which gate rules pass trained models (MiniLM, SmolLM2's GGUF from PyPI, the trained tiny CNN)
# and catch damaged copies (a noise, 99%-pruned or rank-1 layer; shuffled weights), under each
# xmin rule: the confusion table behind the gate's defaults goes into BENCHMARKS.md (docs/gate.md
# explains it; about 10 minutes on 2 shared CPU cores, most of it SmolLM2's 211 layers).
bench-gate: $(TESTDEPS)
	$(BIN)/python benchmarks/gate_evidence.py

# htsr's CUDA path on one GPU, 8 minutes at most (benchmarks/gpu_check.py says what it runs):
# the CUDA tests, alphas against the float64 CPU path, a --profile of a generated 7B-shaped
# checkpoint, torchrun with two ranks on the GPU, wanda pruning. No venv: the machine's own
# python3 (torch, transformers, safetensors, typer, rich) runs the source tree. Results in
# $$OUT (default gpu-check-out/). Dry run on any machine: make gpu-check GPU_CHECK_ARGS="--device cpu".
gpu-check:
	PYTHON=$(PYTHON) bash benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

# pytest and hypothesis in .gpu-check-deps/ (about 15 MB), to copy beside the tree onto a GPU
# machine where nothing can be installed; gpu-check puts the directory on the CUDA tests' path.
# Pure Python wheels, so one directory serves any Python from 3.10: hypothesis before 6.156
# (later ones hold a compiled part per Python version), exceptiongroup and tomli for 3.10.
# No other dependencies: what they need besides (packaging, pygments, typing_extensions) comes
# with transformers and rich, and a copy here would shadow the machine's own.
gpu-check-deps:
	$(PYTHON) -m pip install --quiet --no-deps --target .gpu-check-deps --only-binary=:all: --platform any \
		--implementation py --python-version 3.10 pytest pluggy iniconfig "hypothesis>=6.100,<6.156" \
		sortedcontainers exceptiongroup tomli

# Model Balancing on a low-data MiniLM fine-tune (Trainer) and TempBalance on a small CNN on
# scikit-learn's digits (Lightning), each with and without the callback over several seeds;
# writes the training section of BENCHMARKS.md (about fifteen minutes on 2 busy CPU cores).
bench-training: $(CORE)
	$(BIN)/python -m pip install --quiet -e ".[bench-training]"
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/training.py

fixtures: $(CORE)
	$(BIN)/python fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) .pytest_cache
