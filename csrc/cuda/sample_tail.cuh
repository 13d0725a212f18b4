// Last step of every fused sampler: given the kept list (at most 256 entries, tilted score t and a
// column), apply the nucleus rule, draw with Gumbel-max from the counter noise, and compute the
// log-probability of the draw under the distribution actually sampled.
//
// Reference semantics (mavis_ext/reference.py):
//   nucleus: rank by t descending, ties to the lower column; p = softmax(t) over the kept list;
//            a column stays when (cumsum(p) - p) < top_p, cumsum accumulated in double and rounded
//            to float as torch's CPU cumsum does;
//   draw:    argmax over what stays of t + gumbel(seed, offset, row, column), ties to the lower
//            column;
//   logp:    (t_tok - max) - log(sum exp(t - max)) over what stays.
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

template <int NT>
struct TailSmem {
  static_assert(NT >= kMaxFastK, "sample_tail: one kept entry per thread");
  float t[kMaxFastK];      // input: tilted scores of the kept list (any order)
  int32_t col[kMaxFastK];  // input: column (noise counter and tie-break)
  float t2[kMaxFastK];     // sorted copy (nucleus only)
  int32_t col2[kMaxFastK];
  float p[kMaxFastK];
  unsigned char keep[kMaxFastK];
  float red[NT / 32];
  ArgBest arg[NT / 32];
};

struct TailResult {
  int32_t col;   // drawn column (from TailSmem::col)
  float t;       // its tilted score
  float logp;    // log-prob under the sampled distribution
};

// n in [1, kMaxFastK] entries in sh.t / sh.col. Call from all NT threads; all get the result.
template <int NT>
__device__ TailResult sample_tail(int n, float top_p, const NoiseParams& np, int64_t row, TailSmem<NT>& sh) {
  const int tid = threadIdx.x, lane = tid & 31;
  const bool nucleus = top_p < 1.0f;
  __syncthreads();  // sh.t / sh.col written by the caller
  const float* T = sh.t;
  const int32_t* Cc = sh.col;
  float mx;
  if (nucleus) {
    int rank = 0;
    float my_t = 0.0f;
    int32_t my_c = 0;
    if (tid < n) {
      my_t = sh.t[tid];
      my_c = sh.col[tid];
      for (int f = 0; f < n; ++f) {
        const float tf = sh.t[f];
        const int32_t cf = sh.col[f];
        rank += (tf > my_t || (tf == my_t && cf < my_c)) ? 1 : 0;
      }
      sh.t2[rank] = my_t;
      sh.col2[rank] = my_c;
    }
    __syncthreads();
    mx = sh.t2[0];
    const float e = tid < n ? expf(sh.t2[tid] - mx) : 0.0f;
    const float Z = block_sum<NT>(e, sh.red);
    if (tid < n) sh.p[tid] = e / Z;
    __syncthreads();
    if (tid < 32) {
      // inclusive prefix in double, 8 consecutive entries per lane
      double loc[8];
      double s = 0.0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int idx = lane * 8 + j;
        s += idx < n ? static_cast<double>(sh.p[idx]) : 0.0;
        loc[j] = s;
      }
      double incl = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      double excl = __shfl_up_sync(0xffffffffu, incl, 1);
      if (lane == 0) excl = 0.0;
      const float tp = top_p;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int idx = lane * 8 + j;
        if (idx < n) {
          const float cum = static_cast<float>(excl + loc[j]);
          const float before = cum - sh.p[idx];
          sh.keep[idx] = before < tp ? 1 : 0;
        }
      }
    }
    __syncthreads();
    T = sh.t2;
    Cc = sh.col2;
  } else {
    mx = block_max<NT>(tid < n ? sh.t[tid] : -INFINITY, sh.red);
  }
  ArgBest best{-INFINITY, -1, 0.0f};
  float ex = 0.0f;
  if (tid < n && (!nucleus || sh.keep[tid])) {
    const float t = T[tid];
    const int32_t c = Cc[tid];
    best = ArgBest{t + gumbel_at(np, row, c), c, t};
    ex = expf(t - mx);
  }
  best = block_arg<NT>(best, sh.arg);
  const float sum = block_sum<NT>(ex, sh.red);
  TailResult r;
  r.col = static_cast<int32_t>(best.col);
  r.t = best.t;
  r.logp = (best.t - mx) - logf(sum);
  return r;
}

}  // namespace mavis_cuda
