# make test  - a virtual environment with torch, the project built, and the whole test suite
# make demo  - the project's main job: upscale a bundled photo with the bundled model
# make lint  - ruff (format + lint) on the Python, clang-format on csrc/
# make bench - the benchmarks (CPU); python benchmarks/gpu_check.py --out DIR does the GPU checks
#
# TORCH picks the torch release installed into a new environment (2.13.0: the small CPU build;
# 2.14.1: a CUDA build, with FORCE_CUDA=1 to compile the CUDA kernels without a GPU).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# `pip install -e` as users type it: pip's isolated build, which builds the op against the torch
# installed here (see build_backend/torch_build.py).
install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH)"
	$(PIP) install -q -e ".[dev,runtime]"
	@$(PY) -c "import lte_cuda.ops as o, torch; print('lte_cuda built for torch', torch.__version__, '| CUDA kernels:', o.HAS_CUDA_KERNELS, '| fused op:', 'yes' if o.library_available() else o.LIBRARY_ERROR)"

# pytest exits 5 when it collects no tests: that is a broken suite, not a pass.
# The runtime parity tests run in a process of their own: after OpenVINO had run in the suite's
# process, a later test's subprocess.run crashed that process (SIGSEGV, seen twice here).
test: install
	@$(PY) -m pytest -q -ra tests --ignore=tests/test_export.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	$(PY) -m pytest -q -ra tests/test_export.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no runtime tests"; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror $$(git ls-files 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'tests/cpp/*.cpp')

demo: install
	$(PY) -m lte_cuda demo

bench: install
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf build *.egg-info lte_cuda/_C*.so lte_cuda/_build_info.py
