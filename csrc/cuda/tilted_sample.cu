// tilted_sample on CUDA.
//
// Fast paths (two launches, no host synchronisation except the optional status check):
//   phase 1  chunk_scan (chunk_scan.cu): split-vocabulary pass over the logits (and the values in
//            the tilted / full-vocab modes);
//   phase 2  sample_merge_kernel (here): one 256-thread block per row merges the chunk records,
//            selects the exact top-k (topk_on="base": of logits / T; the values are gathered at the
//            k kept columns only; topk_on="tilted": of the tilted scores), applies the nucleus and
//            draws with Gumbel-max (sample_tail.cuh). Without top-k the Gumbel-max winner and the
//            tilted logsumexp come out of phase 1 directly.
// Slow paths (slow_paths.cu): 256 < top_k < N, and top_p < 1 without top-k.
#include "block_topk.cuh"
#include "chunk_scan.cuh"
#include "host_checks.cuh"
#include "sample_tail.cuh"
#include "slow_paths.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;

struct SampleArgs {
  ScanConfig s;
  float top_p;
  const int64_t* cand_map;  // candidate_ids [B, N] or nullptr
  int64_t* out_ids;
  float* out_lt;
  float* out_lb;
  int32_t* status;
};

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
  const int64_t row = blockIdx.x;
  const int C = s.n_chunks;
  const ChunkRec* recs = s.recs + row * C;

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
    logp_t = (best.t - lt.max) - logf(lt.sum);
  } else {
    const int k = s.k;
    const int64_t base_slot = row * static_cast<int64_t>(C) * k;
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
          acc = combine_step_rn(acc, w[i], load_any(s.values, s.values_code, (row * s.m + i) * s.N + c));
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
    const float base_tok = scale_logit_rn(load_any(s.logits, s.logits_code, row * s.N + col), s.temperature);
    a.out_ids[row] = a.cand_map != nullptr ? a.cand_map[row * s.N + col] : col;
    a.out_lt[row] = logp_t;
    a.out_lb[row] = (base_tok - lb.max) - logf(lb.sum);
    a.status[row] = 0;
  }
}

}  // namespace

Sample3 tilted_sample_cuda(const at::Tensor& logits_in, const c10::optional<at::Tensor>& values_in,
                           const c10::optional<at::Tensor>& weights_in, double beta, double temperature, int64_t top_k,
                           double top_p, bool topk_on_tilted, const c10::optional<at::Tensor>& candidate_ids_in,
                           const at::Tensor& seed_in, const at::Tensor& offset_in) {
  mavis::check_logits(logits_in);
  check_cuda(logits_in, "logits");
  mavis::check_temperature(temperature);
  mavis::check_top_p(top_p);
  check_beta(beta);
  const int64_t B = logits_in.size(0), N = logits_in.size(1);
  TORCH_CHECK(top_k >= 0 && top_k <= N, "top_k: must satisfy 0 <= top_k <= N=", N, " (0 keeps every column), got ",
              top_k);
  const bool has_values = values_in.has_value();
  TORCH_CHECK(has_values || !weights_in.has_value(), "weights: given without values");
  if (has_values) {
    check_values(*values_in, logits_in);
    TORCH_CHECK(weights_in.has_value(), "weights: required when values are given");
    mavis::check_weights(*weights_in, B, values_in->size(1), logits_in);
  }
  if (candidate_ids_in.has_value()) {
    const at::Tensor& c = *candidate_ids_in;
    TORCH_CHECK(c.scalar_type() == at::kLong, "candidate_ids: expected int64, got ", c.scalar_type());
    TORCH_CHECK(c.dim() == 2 && c.size(0) == B && c.size(1) == N, "candidate_ids: expected shape [B=", B, ", N=", N,
                "], got ", c.sizes());
    mavis::check_same_device(c, logits_in, "candidate_ids");
  }
  mavis::check_seed(seed_in, offset_in, B, logits_in);

  const c10::cuda::CUDAGuard guard(logits_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor values = has_values ? values_in->contiguous() : at::Tensor();
  const at::Tensor weights = has_values ? weights_in->contiguous() : at::Tensor();
  const at::Tensor cand_map = candidate_ids_in.has_value() ? candidate_ids_in->contiguous() : at::Tensor();
  const at::Tensor seed = seed_in.contiguous(), offset = offset_in.contiguous();
  const NoiseParams noise = make_noise(seed, offset, B);
  const bool restricted = top_k > 0 && top_k < N;
  const float temp_f = static_cast<float>(temperature), beta_f = static_cast<float>(beta);
  const float top_p_f = static_cast<float>(top_p);

  if ((restricted && top_k > kMaxFastK) || (!restricted && top_p < 1.0)) {
    return tilted_sample_slow(logits, values, weights, beta_f, temp_f, top_k, top_p_f, topk_on_tilted, cand_map,
                              noise, stream);
  }

  ScanConfig cfg;
  cfg.logits = logits.data_ptr();
  cfg.logits_code = dtype_code(logits.scalar_type());
  cfg.vec_logits = rows_vec_aligned(logits, N);
  if (has_values) {
    cfg.values = values.data_ptr();
    cfg.values_code = dtype_code(values.scalar_type());
    cfg.vec_values = rows_vec_aligned(values, N);
    cfg.weights = weights.data_ptr<float>();
    cfg.w_per_row = weights.dim() == 2;
    cfg.m = static_cast<int>(values.size(1));
  }
  cfg.B = B;
  cfg.N = N;
  cfg.temperature = temp_f;
  cfg.beta = beta_f;
  cfg.k = restricted ? static_cast<int>(top_k) : 0;
  // without values the tilted scores are the scaled logits: top-k "on tilted" is top-k on base
  cfg.mode = !restricted ? kFullGumbel : ((topk_on_tilted && has_values) ? kTopkTilted : kTopkBase);
  cfg.noise = noise;
  const ScanWorkspace ws = plan_scan(cfg, logits);
  launch_chunk_scan(cfg, stream);

  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  at::Tensor status = at::empty({B}, opts.dtype(at::kInt));
  SampleArgs a{cfg, top_p_f, cand_map.defined() ? cand_map.data_ptr<int64_t>() : nullptr, ids.data_ptr<int64_t>(),
               logp_t.data_ptr<float>(), logp_b.data_ptr<float>(), status.data_ptr<int32_t>()};
  const unsigned grid = static_cast<unsigned>(B);
  if (cfg.mode == kFullGumbel) sample_merge_kernel<kFullGumbel><<<grid, kNT, 0, stream>>>(a);
  else if (cfg.mode == kTopkTilted) sample_merge_kernel<kTopkTilted><<<grid, kNT, 0, stream>>>(a);
  else sample_merge_kernel<kTopkBase><<<grid, kNT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  check_status(status, stream);
  return {ids, logp_t, logp_b};
}

}  // namespace mavis_cuda

TORCH_LIBRARY_IMPL(mavis, CUDA, m) { m.impl("tilted_sample", &mavis_cuda::tilted_sample_cuda); }
