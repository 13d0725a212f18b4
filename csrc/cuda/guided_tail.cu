// guided_sample on CUDA, the last kernel (host side: host_guided_sample.cuh). The fused MAVIS step
// for Q-head value models is four launches, no host synchronisation except the optional status
// check:
//   1. chunk_scan (kTopkBase): split-vocabulary top-k of logits / T and logsumexp, one pass;
//   2. topk_merge_kernel: per row, the sorted top-k candidates, lse, number of finite candidates;
//   3. head_kernel (value_heads.cu, Q-head mode with weights): one warp per (row, candidate)
//      gathers the candidate's row of each of the m heads (16-byte loads) and folds the weights;
//   4. guided_tail_kernel (here): t = cand + beta * comb, nucleus, Gumbel-max with the candidate
//      position as noise column, logp_base = cand - lse.
// top_k > 256: the ATen slow path for steps 1-2 and 4 (host_slow_paths.cuh).
#include "guided_tail.cuh"
#include "sample_tail.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;


struct TailKernelSmem {
  TailSmem<kNT> tail;
  int or_s[kNT / 32];
};

__global__ void __launch_bounds__(kNT) guided_tail_kernel(const GuidedTailArgs a) {
  __shared__ TailKernelSmem sm;
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;
  int err = a.status_in[row];
  for (int i = tid; i < a.m; i += kNT)
    if (!isfinite(a.weights[(a.w_per_row ? row * a.m : 0) + i])) err |= kWeightsBad;
  const int n = a.n_finite[row];  // finite candidates occupy positions [0, n)
  const float* cand = a.cand_logits + row * a.K;
  if (tid < n) {
    const float t = tilt_rn(cand[tid], a.beta, a.comb[row * a.K + tid]);
    if (!isfinite(t)) err |= kValuesBad;
    sm.tail.t[tid] = t;
    sm.tail.col[tid] = tid;
  }
  err = block_or<kNT>(err, sm.or_s);
  if (err || n <= 0) {
    if (tid == 0) {
      a.out_ids[row] = -1;
      a.out_lt[row] = NAN;
      a.out_lb[row] = NAN;
      a.status[row] = err ? err : kRowNoFinite;
    }
    return;
  }
  const TailResult r = sample_tail<kNT>(n, a.top_p, a.noise, row, sm.tail);
  if (tid == 0) {
    a.out_ids[row] = a.cand_ids[row * a.K + r.col];
    a.out_lt[row] = r.logp;
    a.out_lb[row] = cand[r.col] - a.lse[row];
    a.status[row] = 0;
  }
}

}  // namespace

void launch_guided_tail(const GuidedTailArgs& a, int64_t B, cudaStream_t stream) {
  guided_tail_kernel<<<static_cast<unsigned>(B), kNT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mavis_cuda
