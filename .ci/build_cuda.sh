#!/usr/bin/env bash
# CI step: compile and link mavis_ext WITH its CUDA kernels (no GPU needed) against torch 2.14.1
# (CUDA 13.0), check that the CUDA kernels registered, then run the CPU test suite against that
# installed (non-editable) build.
#
#   .ci/build_cuda.sh [VENV_DIR]        (run from anywhere; needs nvcc on PATH; default .venv-cuda)
#
# Environment: MAX_JOBS (default 2), TORCH_CUDA_ARCH_LIST (default "8.0;9.0").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${1:-$ROOT/.venv-cuda}")"  # absolute: the tests run from /tmp
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[build_cuda $(el)s] $*"; }

NVCC="$(command -v nvcc || true)"
[ -n "$NVCC" ] || { echo "build_cuda: nvcc is not on PATH" >&2; exit 2; }

log "venv $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
"$PY" -m pip install -q torch==2.14.1 numpy ninja pytest hypothesis scipy expecttest transformers safetensors tqdm

# CUDA headers/libraries: torch's nvidia-* wheels first, then the toolkit next to nvcc.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
NVWHEEL="$SITE/nvidia/cu13"
[ -d "$NVWHEEL/include" ] || { echo "build_cuda: $NVWHEEL/include not found (torch wheel layout changed?)" >&2; exit 2; }
# nvcc may be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc): prefer CUDA_HOME,
# then /usr/local/cuda, then the directory above nvcc.
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -d /usr/local/cuda/bin ]; then CUDA_HOME=/usr/local/cuda
  else CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"; fi
fi
export CUDA_HOME
# The wheel ships only libcudart.so.13; the linker's -lcudart needs an unversioned name.
LINKDIR="$VENV/cuda-link"
mkdir -p "$LINKDIR"
[ -e "$NVWHEEL/lib/libcudart.so.13" ] && ln -sf "$NVWHEEL/lib/libcudart.so.13" "$LINKDIR/libcudart.so"
export CPATH="$NVWHEEL/include:$CUDA_HOME/include${CPATH:+:$CPATH}"
export LIBRARY_PATH="$LINKDIR:$NVWHEEL/lib:$CUDA_HOME/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
log "torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)'), nvcc $("$NVCC" --version | tail -1)"

log "build (FORCE_CUDA=1, archs ${TORCH_CUDA_ARCH_LIST:-8.0;9.0})"
B0=$(date +%s)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" -m pip install --no-build-isolation --no-deps -q "$ROOT"
log "build took $(( $(date +%s) - B0 ))s"

# Import the INSTALLED package (not the source tree) and check the CUDA kernels registered.
cd /tmp
"$PY" - "$ROOT" <<'EOF'
import os, sys
import mavis_ext
root = os.path.realpath(sys.argv[1])
path = os.path.realpath(mavis_ext.__file__)
print("mavis_ext from", path)
assert path != os.path.join(root, "mavis_ext", "__init__.py"), "imported the source tree, not the installed build"
assert mavis_ext.HAS_C, "compiled extension did not load"
assert mavis_ext.has_cuda_kernels(), "CUDA kernels are not registered"
import torch
for op in ("topk_candidates", "value_heads", "tilt_logits", "tilted_sample", "guided_sample"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mavis::{op}", "CUDA"), op
print("CUDA kernels registered for all five ops")
EOF

log "CPU op tests against the installed build"
# The op tests are what depends on the build (the layers above the ops are the same Python and
# already ran under `make test`); MAVIS_CI_FULL_SUITE=1 runs the whole suite here as well.
# Run from /tmp: pytest puts only python_tests/ (no __init__.py; the tests import its conftest) on
# sys.path, not the repository root, so the installed mavis_ext (checked above) is the one tested.
if [ "${MAVIS_CI_FULL_SUITE:-0}" = "1" ]; then
  TESTS=("$ROOT/python_tests")
else
  TESTS=("$ROOT"/python_tests/test_ops_*.py "$ROOT/python_tests/test_sampling.py"
         "$ROOT/python_tests/test_bad_inputs.py" "$ROOT/python_tests/test_compile.py"
         "$ROOT/python_tests/test_fallback.py")
fi
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "${TESTS[@]}"
"$PY" -c "import mavis_ext, sys; sys.exit(0 if mavis_ext.__file__.startswith('$SITE') else 1)"
log "done"
