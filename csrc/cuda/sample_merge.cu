// tilted_sample on CUDA, the device side (host side: host_tilted_sample.cuh).
//
// Fast paths (two launches, no host synchronisation except the optional status check):
//   phase 1  chunk_scan (chunk_scan.cu): split-vocabulary pass over the logits (and the values in
//            the tilted / full-vocab modes);
//   phase 2  sample_merge_kernel (here): one 256-thread block per row merges the chunk records,
//            selects the exact top-k (topk_on="base": of logits / T; the values are gathered at the
//            k kept columns only; topk_on="tilted": of the tilted scores), applies the nucleus and
//            draws with Gumbel-max (sample_tail.cuh). Without top-k the Gumbel-max winner and the
//            tilted logsumexp come out of phase 1 directly.
// Slow paths (host_slow_paths.cuh): 256 < top_k < N, and top_p < 1 without top-k.
#include "block_topk.cuh"
#include "sample_merge.cuh"
#include "sample_tail.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;


struct MergeSmem {
  MergeSelectSmem<kNT, kMergeCap> ms;
  TailSmem<kNT> tail;
  mavis::LseAcc lse_s[kNT / 32];
  ArgBest arg_s[kNT / 32];
  int or_s[kNT / 32];
};

__device__ __forceinline__ void write_bad_row(const SampleArgs& a, int64_t row, int err) {
  a.out_ids[row] = -1;
  a.out_lt[row] = NAN;
  a.out_lb[row] = NAN;
  a.status[row] = err;
}

template <int MODE>
__global__ void __launch_bounds__(kNT) sample_merge_kernel(const SampleArgs a) {
  __shared__ MergeSmem sm;
  const ScanConfig& s = a.s;
  const int tid = threadIdx.x;
  const int64_t lr = blockIdx.x, row = s.row0 + lr;
  const int C = s.n_chunks;
  const ChunkRec* recs = s.recs + lr * C;

  mavis::LseAcc lb = mavis::lse_init(), lt = mavis::lse_init();
  ArgBest best{-INFINITY, -1, 0.0f};
  int fl = 0;
  for (int c = tid; c < C; c += kNT) {
    const ChunkRec r = recs[c];
    lb = mavis::lse_merge(lb, mavis::LseAcc{r.lse_max, r.lse_sum});
    fl |= r.flags;
    if constexpr (MODE == kFullGumbel) {
      lt = mavis::lse_merge(lt, mavis::LseAcc{r.t_max, r.t_sum});
      best = arg_merge(best, ArgBest{r.best_score, r.best_col, r.best_t});
    }
  }
  if (s.values != nullptr)
    for (int i = tid; i < s.m; i += kNT)
      if (!isfinite(s.weights[(s.w_per_row ? row * s.m : 0) + i])) fl |= kWeightsBad;
  lb = block_lse<kNT>(lb, sm.lse_s);
  fl = block_or<kNT>(fl, sm.or_s);
  if constexpr (MODE == kFullGumbel) {
    lt = block_lse<kNT>(lt, sm.lse_s);
    best = block_arg<kNT>(best, sm.arg_s);
  }
  int err = fl & (kLogitsErrors | kWeightsBad | kValuesBad);
  if (!(fl & kHasFinite)) err |= kRowNoFinite;
  if (err) {
    if (tid == 0) write_bad_row(a, row, err);
    return;
  }

  int64_t col;
  float logp_t;
  if constexpr (MODE == kFullGumbel) {
    col = best.col;
    logp_t = static_cast<float>(static_cast<double>(best.t) - lse_value_d(lt));
  } else {
    const int k = s.k;
    const int64_t base_slot = lr * static_cast<int64_t>(C) * k;
    const int cnt = merge_select<kNT, kMergeCap>(s.cand_key + base_slot, s.cand_id + base_slot, C * k, k, sm.ms);
    int vbad = 0;
    if (tid < cnt) {
      const int32_t c = sm.ms.sel.sel_id[tid];
      float t = mavis::ordered_to_float(sm.ms.sel.sel_key[tid]);
      if (MODE == kTopkBase && s.values != nullptr) {
        // gather the m values of the kept column (the only values this mode ever reads)
        const float* w = s.weights + (s.w_per_row ? row * s.m : 0);
        float acc = 0.0f;
        for (int i = 0; i < s.m; ++i)
          acc = combine_step_rn(acc, w[i], load_any(s.values, s.values_code, row * s.vs_b + i * s.vs_m + c));
        t = tilt_rn(t, s.beta, acc);
        vbad = isfinite(t) ? 0 : kValuesBad;
      }
      sm.tail.t[tid] = t;
      sm.tail.col[tid] = c;
    }
    vbad = block_or<kNT>(vbad, sm.or_s);
    if (vbad) {
      if (tid == 0) write_bad_row(a, row, vbad);
      return;
    }
    const TailResult r = sample_tail<kNT>(cnt, a.top_p, s.noise, row, sm.tail);
    col = r.col;
    logp_t = r.logp;
  }
  if (tid == 0) {
    const float base_tok = scale_logit_rn(load_any(s.logits, s.logits_code, row * s.ld_logits + col), s.temperature);
    a.out_ids[row] = a.cand_map != nullptr ? a.cand_map[row * s.N + col] : col;
    a.out_lt[row] = logp_t;
    a.out_lb[row] = (base_tok - lb.max) - logf(lb.sum);
    a.status[row] = 0;
  }
}

}  // namespace

void launch_sample_merge(const SampleArgs& a, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(a.s.rows);
  if (a.s.mode == kFullGumbel) sample_merge_kernel<kFullGumbel><<<grid, kNT, 0, stream>>>(a);
  else if (a.s.mode == kTopkTilted) sample_merge_kernel<kTopkTilted><<<grid, kNT, 0, stream>>>(a);
  else sample_merge_kernel<kTopkBase><<<grid, kNT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mavis_cuda
