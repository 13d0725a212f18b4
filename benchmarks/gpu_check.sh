#!/usr/bin/env bash
# The one prepared GPU check of the mavis CUDA kernels, for a session with an H100/H200 (device
# tool: it runs in the repository root on the device machine; results go to $OUT). It must finish
# well inside the 10-minute command limit, so every stage has its own timeout and the stages run in
# order of importance:
#   1. build in place against the device's own torch and nvcc (TORCH_CUDA_ARCH_LIST=9.0);
#   2. the op tests on CUDA (the suite parametrizes over cpu/cuda when a GPU is present);
#   3. benchmarks/bench_cuda.py (copy bandwidth, kernel times, floors, speedups, graph capture);
#   4. compute-sanitizer memcheck on a small case of every op (all code paths: fast and slow);
#   5. the rest of the test suite, with whatever time is left.
# Prints a short summary table last. Usage:  bash benchmarks/gpu_check.sh
# Optional: wheels of missing Python packages (e.g. expecttest, needed by torch.library.opcheck)
# in .whl/ (carried by the device tool) are installed first.
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[gpu_check $(el)s] $*"; }
declare -A RES

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee -a "$OUT/gpu.txt"

# 1. build (in place: the device's copy of the tree is disposable)
log "build"
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="${MAX_JOBS:-16}"
if timeout 240 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
   && "$PY" -c "import mavis_ext, sys; sys.exit(0 if mavis_ext.has_cuda_kernels() else 1)"; then
  RES[build]="ok ($(el)s)"
else
  tail -40 "$OUT/build.log"
  echo "build FAILED"; exit 1
fi
grep -E "registers|spill" "$OUT/build.log" > "$OUT/ptxas.txt" 2>/dev/null || true

# 2. op tests on CUDA (and CPU) first
log "op tests"
OPS_TESTS=$(ls python_tests/test_ops_*.py python_tests/test_bad_inputs.py python_tests/test_sampling.py \
            python_tests/test_compile.py 2>/dev/null | tr '\n' ' ')
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -rfE $OPS_TESTS > "$OUT/pytest_ops.log" 2>&1
RES[op_tests]="rc=$? $(tail -1 "$OUT/pytest_ops.log")"
tail -25 "$OUT/pytest_ops.log"

# 3. benchmark
log "benchmark"
timeout 150 "$PY" benchmarks/bench_cuda.py --out "$OUT" > "$OUT/bench.log" 2>&1
RES[bench]="rc=$?"
tail -12 "$OUT/bench.log"

# 4. compute-sanitizer memcheck, small case of each op and path
log "memcheck"
cat > /tmp/mavis_sanitize.py <<'EOF'
import torch, mavis_ext as mx
torch.manual_seed(0)
d = "cuda"
for dt in (torch.float32, torch.bfloat16):
    for (B, V) in ((3, 1000), (2, 5003)):   # 5003: unaligned rows (scalar load path)
        lg = (torch.randn(B, V, device=d) * 3).to(dt)
        vals = torch.randn(B, 2, V, device=d).to(dt)
        w = torch.rand(2, device=d)
        mx.topk_candidates(lg, 7, temperature=0.7)
        mx.topk_candidates(lg, 300, temperature=0.7)                       # slow path (k > 256)
        mx.tilt_logits(lg, vals, w, beta=0.5)
        for top_k, top_p, on in ((40, 1.0, "base"), (40, 0.9, "tilted"), (0, 1.0, "base"), (0, 0.8, "base"), (300, 0.95, "base")):
            mx.tilted_sample(lg, vals, w, beta=0.5, temperature=0.9, top_k=top_k, top_p=top_p, topk_on=on, seed=1,
                             return_logprobs=True)
        hid = torch.randn(B, 64, device=d).to(dt)
        Wq = torch.randn(2, V, 64, device=d).to(dt)
        bq = torch.randn(2, V, device=d).to(dt)
        ids = torch.randint(0, V, (B, 9), device=d)
        mx.value_heads(hid, Wq, bq, candidate_ids=ids, weights=w)
        mx.value_heads(torch.randn(B, 5, 64, device=d).to(dt), torch.randn(2, 64, device=d).to(dt), torch.randn(2, device=d).to(dt))
        mx.guided_sample(lg, hid, Wq, bq, w, beta=0.7, top_k=12, top_p=0.9, seed=3, return_logprobs=True)
        mx.guided_sample(lg, hid, Wq, bq, w, beta=0.7, top_k=260, seed=3, return_logprobs=True)
# a bad row: must raise, not crash
lg = torch.randn(2, 1000, device=d); lg[1] = float("-inf")
try:
    mx.tilted_sample(lg, top_k=5, seed=1); raise SystemExit("no error raised for an all -inf row")
except RuntimeError as e:
    print("raised as expected:", e)
torch.cuda.synchronize()
print("sanitize cases done")
EOF
if command -v compute-sanitizer >/dev/null; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" /tmp/mavis_sanitize.py > "$OUT/memcheck.log" 2>&1
  RES[memcheck]="rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1)"
else
  RES[memcheck]="compute-sanitizer not found"
fi
tail -5 "$OUT/memcheck.log" 2>/dev/null

# 5. the rest of the suite, with the time left (the whole command must stay < 600 s)
LEFT=$(( 560 - $(el) ))
if [ "$LEFT" -gt 30 ]; then
  log "rest of the suite (${LEFT}s)"
  timeout "$LEFT" "$PY" -m pytest -q -p no:cacheprovider -rfE python_tests $(for f in $OPS_TESTS; do echo --deselect "$f"; done) \
    > "$OUT/pytest_rest.log" 2>&1
  RES[rest]="rc=$? $(tail -1 "$OUT/pytest_rest.log")"
else
  RES[rest]="skipped (no time left)"
fi

echo
echo "== gpu_check summary ($(el)s, $(head -2 "$OUT/gpu.txt" | tail -1)) =="
for k in build op_tests bench memcheck rest; do printf '%-9s %s\n' "$k" "${RES[$k]:-not run}"; done
echo
cat "$OUT/bench_cuda.md" 2>/dev/null
