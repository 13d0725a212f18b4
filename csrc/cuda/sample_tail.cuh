// Last step of every fused sampler: given the kept list (at most 256 entries, tilted score t and a
// column), apply the nucleus rule, draw with Gumbel-max from the counter noise, and compute the
// log-probability of the draw under the distribution actually sampled.
//
// Rules (the CPU kernel's, csrc/cpu/sampling.h; reference.py states the same rule):
//   nucleus: rank by t descending, ties to the lower column; lse = logsumexp(t) over the list in
//            double; a column stays when the mass ranked strictly before it,
//            sum_{i ranked before} exp(t_i - lse) accumulated in double, is < top_p (double);
//            the kept columns are a prefix of the ranking (the masses are >= 0);
//   draw:    argmax over what stays of (double)t + gumbel(seed, offset, row, column) in double,
//            ties to the lower column;
//   logp:    t_tok - logsumexp(t over what stays), in double, rounded to float.
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

template <int NT>
struct TailSmem {
  static_assert(NT >= kMaxFastK, "sample_tail: one kept entry per thread");
  float t[kMaxFastK];      // input: tilted scores of the kept list (any order)
  int32_t col[kMaxFastK];  // input: column (noise counter and tie-break)
  float t2[kMaxFastK];     // ranked copy (nucleus only)
  int32_t col2[kMaxFastK];
  unsigned char keep[kMaxFastK];
  float red_f[NT / 32];
  double red_d[NT / 32];
  ArgBest arg[NT / 32];
};

struct TailResult {
  int32_t col;   // drawn column (from TailSmem::col)
  float t;       // its tilted score
  float logp;    // log-prob under the sampled distribution
};

// n in [1, kMaxFastK] entries in sh.t / sh.col (finite scores). Call from all NT threads; all get
// the result.
template <int NT>
__device__ TailResult sample_tail(int n, double top_p, const NoiseParams& np, int64_t row, TailSmem<NT>& sh) {
  const int tid = threadIdx.x, lane = tid & 31;
  const bool nucleus = top_p < 1.0;
  __syncthreads();  // sh.t / sh.col written by the caller
  const float mx = block_max<NT>(tid < n ? sh.t[tid] : -INFINITY, sh.red_f);
  const float* T = sh.t;
  const int32_t* Cc = sh.col;
  if (nucleus) {
    // rank sort (direct ranks: columns are distinct)
    if (tid < n) {
      const float my_t = sh.t[tid];
      const int32_t my_c = sh.col[tid];
      int rank = 0;
      for (int f = 0; f < n; ++f) {
        const float tf = sh.t[f];
        const int32_t cf = sh.col[f];
        rank += (tf > my_t || (tf == my_t && cf < my_c)) ? 1 : 0;
      }
      sh.t2[rank] = my_t;
      sh.col2[rank] = my_c;
    }
    const double z = block_sum<NT, double>(tid < n ? exp(static_cast<double>(sh.t[tid]) - mx) : 0.0, sh.red_d);
    const double lse = static_cast<double>(mx) + log(z);
    // (block_sum's barriers also publish t2 / col2.) Exclusive prefix of the masses in rank order,
    // in double, by warp 0: 8 consecutive entries per lane.
    if (tid < 32) {
      double loc[8];
      double s = 0.0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int idx = lane * 8 + j;
        loc[j] = s;  // mass of this lane's entries ranked before idx
        s += idx < n ? exp(static_cast<double>(sh.t2[idx]) - lse) : 0.0;
      }
      double incl = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      double lane_before = __shfl_up_sync(0xffffffffu, incl, 1);  // mass of the earlier lanes' entries
      if (lane == 0) lane_before = 0.0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int idx = lane * 8 + j;
        if (idx < n) sh.keep[idx] = (lane_before + loc[j]) < top_p ? 1 : 0;
      }
    }
    __syncthreads();
    T = sh.t2;
    Cc = sh.col2;
  }
  ArgBest best{-INFINITY, -1, 0.0f};
  double ex = 0.0;
  if (tid < n && (!nucleus || sh.keep[tid])) {
    const float t = T[tid];
    const int32_t c = Cc[tid];
    best = ArgBest{static_cast<double>(t) + gumbel_at(np, row, c), c, t};
    ex = exp(static_cast<double>(t) - mx);
  }
  best = block_arg<NT>(best, sh.arg);
  const double sum = block_sum<NT, double>(ex, sh.red_d);
  TailResult r;
  r.col = static_cast<int32_t>(best.col);
  r.t = best.t;
  r.logp = static_cast<float>(static_cast<double>(best.t) - (static_cast<double>(mx) + log(sum)));
  return r;
}

}  // namespace mavis_cuda
