# The two commands of the README:
#   make demo   - set up everything on a fresh machine, then run the main job (`mavis demo`) on its
#                 embedded default (a tiny exact testbed: no downloads of models or data).
#   make test   - set up everything, then run the test suite.
# Both create ./.venv (override with VENV=...), install torch + dependencies, and build the
# extension in place. TORCH picks the torch wheel (the CPU build by default on the CI machines).

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
DEPS    = transformers safetensors numpy tqdm matplotlib ninja
TEST_DEPS = pytest pytest-benchmark hypothesis scipy expecttest
SOURCES = $(wildcard csrc/*.cpp csrc/*.h csrc/include/mavis/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: demo test setup bench bench-decoding clean

demo: $(VENV)/.built
	$(VENV)/bin/mavis demo $(DEMO_ARGS)

test: $(VENV)/.built
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest python_tests -q $(PYTEST_ARGS)

setup: $(VENV)/.built

bench: $(VENV)/.built
	$(PY) benchmarks/bench_ops.py --device cpu --threads 2

bench-decoding: $(VENV)/.built
	$(PY) benchmarks/bench_decoding.py

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q $(DEPS) $(TEST_DEPS)
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

clean:
	rm -rf build *.egg-info mavis_ext/_C*.so $(VENV)
