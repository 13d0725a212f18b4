#!/usr/bin/env bash
# The one prepared GPU check of the mavis CUDA kernels, for a session with an H100/H200 (device
# tool: it runs in the repository root on the device machine; results go to $OUT). The device
# allows one command of at most 10 minutes and 15 minutes of device time per session, so the whole
# script keeps to a 540-second budget (override: GPU_CHECK_BUDGET) and every stage gets a timeout
# cut to what is left, stages in order of importance:
#   1. build in place against the device's own torch and nvcc (TORCH_CUDA_ARCH_LIST=9.0);
#   2. the CUDA op tests: the CUDA parametrizations of the op suite (reference parity, CPU = CUDA
#      tokens, chi-squared, opcheck, torch.compile, invalid rows) and python_tests/test_cuda_*.py
#      (the kernels' edge cases, far-tail sampling, mark_invalid rows), 8 pytest workers;
#   3. CUDA-graph capture tests (python_tests/test_cuda_graphs.py: every op and path, call forms,
#      bad rows under capture, MAVIS_CUDA_CHECKS=0, sync-free mark_invalid, a capture on another
#      stream, torch.compile reduce-overhead);
#   4. compute-sanitizer memcheck on a small case of every code path (benchmarks/gpu_sanitize_cases.py);
#   5. benchmarks/bench_cuda.py --quick (copy bandwidth, kernel times, floors, speedups, capture);
#   6. the rest of the test suite, with whatever time is left.
# Prints a summary table last. At most 8 files come back from $OUT: gpu.txt (card, versions,
# summary), build.log, pytest_cuda.log, pytest_graphs.log, memcheck.log, bench_cuda.md,
# bench_cuda.json, pytest_rest.log.
# Usage:  bash benchmarks/gpu_check.sh
# Optional: wheels of missing Python packages (e.g. expecttest, needed by torch.library.opcheck)
# in .whl/ (carried by the device tool) are installed first.
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[gpu_check $(el)s] $*"; }
# left RESERVE MAX: seconds this stage may take: at most MAX, leaving RESERVE for later stages
left() { local l=$(( BUDGET - $(el) - $1 )); [ "$l" -gt "$2" ] && l=$2; [ "$l" -lt 1 ] && l=1; echo "$l"; }
declare -A RES
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  nvcc --version | tail -1; } 2>&1 | tee "$OUT/gpu.txt"

# 1. build (in place: the device's copy of the tree is disposable)
log "build"
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="${MAX_JOBS:-16}"
if timeout "$(left 300 240)" "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
   && "$PY" -c "import mavis_ext, sys; sys.exit(0 if mavis_ext.has_cuda_kernels() else 1)" >> "$OUT/build.log" 2>&1; then
  RES[build]="ok ($(el)s)"
else
  tail -40 "$OUT/build.log"
  echo "build FAILED"; exit 1
fi

# 2. CUDA op tests: every test whose id mentions cuda (the device-parametrized op suite and the
# test_cuda_* modules), in parallel workers; the CPU parametrizations already ran in CI.
log "CUDA op tests"
OPS_TESTS=$(ls python_tests/test_ops_*.py python_tests/test_bad_inputs.py python_tests/test_sampling.py \
            python_tests/test_compile.py python_tests/test_invalid_rows.py python_tests/test_cuda_kernel_edges.py \
            python_tests/test_cuda_noise_tail.py python_tests/test_cuda_mark_invalid.py 2>/dev/null | tr '\n' ' ')
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
timeout "$(left 250 200)" "$PY" -m pytest -q -p no:cacheprovider -rfE $XDIST -k cuda $OPS_TESTS \
  > "$OUT/pytest_cuda.log" 2>&1
RES[cuda_tests]="rc=$? $(tail -1 "$OUT/pytest_cuda.log")"
tail -25 "$OUT/pytest_cuda.log"

# 3. CUDA-graph capture tests (one process: captures and sync-debug mode are process state)
log "capture tests"
timeout "$(left 200 90)" "$PY" -m pytest -q -p no:cacheprovider -rfE python_tests/test_cuda_graphs.py \
  > "$OUT/pytest_graphs.log" 2>&1
RES[capture]="rc=$? $(tail -1 "$OUT/pytest_graphs.log")"
tail -15 "$OUT/pytest_graphs.log"

# 4. compute-sanitizer memcheck, a small case of every op and code path
log "memcheck"
if command -v compute-sanitizer >/dev/null; then
  timeout "$(left 110 120)" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" benchmarks/gpu_sanitize_cases.py > "$OUT/memcheck.log" 2>&1
  RES[memcheck]="rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
else
  RES[memcheck]="compute-sanitizer not found"
fi
tail -5 "$OUT/memcheck.log" 2>/dev/null

# 5. benchmark (prints its table; writes bench_cuda.md / bench_cuda.json)
log "benchmark"
timeout "$(left 30 110)" "$PY" benchmarks/bench_cuda.py --quick --out "$OUT" 2>&1 | tail -14
RES[bench]="rc=${PIPESTATUS[0]}"

# 6. the rest of the suite, with the time left
LEFT=$(left 5 600)
if [ "$LEFT" -gt 30 ]; then
  log "rest of the suite (${LEFT}s)"
  timeout "$LEFT" "$PY" -m pytest -q -p no:cacheprovider -rfE $XDIST python_tests \
    $(for f in $OPS_TESTS python_tests/test_cuda_graphs.py; do echo --ignore="$f"; done) > "$OUT/pytest_rest.log" 2>&1
  RES[rest]="rc=$? $(tail -1 "$OUT/pytest_rest.log")"
else
  RES[rest]="skipped (no time left)"
fi

{
  echo
  echo "== gpu_check summary ($(el)s of ${BUDGET}s, $(sed -n 2p "$OUT/gpu.txt")) =="
  for k in build cuda_tests capture memcheck bench rest; do printf '%-10s %s\n' "$k" "${RES[$k]:-not run}"; done
  echo
  cat "$OUT/bench_cuda.md" 2>/dev/null
} | tee -a "$OUT/gpu.txt"
