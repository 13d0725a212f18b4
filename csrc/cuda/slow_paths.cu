// Slow paths (see slow_paths.cuh): the reference algorithm written with ATen ops on the device
// (stable sort, softmax, cumsum, scatter; no host synchronisation), plus masked_sample_kernel for
// the Gumbel-max draw with the shared counter noise. Used only where the fused kernels do not
// apply (k > 256, or a nucleus over the whole vocabulary), so clarity wins over speed here.
#include "slow_paths.cuh"
#include "tilt_kernel.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;

struct MaskedSmem {
  mavis::LseAcc lse_s[kNT / 32];
  ArgBest arg_s[kNT / 32];
};

// One block per row: Gumbel-max over the kept columns, logsumexp of t over them and of base over
// its finite entries (or logp_base = base[tok] - lse_override[row] when given).
__global__ void __launch_bounds__(kNT)
    masked_sample_kernel(const float* __restrict__ t, const float* __restrict__ base, const bool* __restrict__ keep,
                         int64_t N, NoiseParams noise, const int64_t* __restrict__ cand_map,
                         const float* __restrict__ lse_override, const int32_t* __restrict__ status_in,
                         int64_t* out_ids, float* out_lt, float* out_lb, int32_t* status_out) {
  __shared__ MaskedSmem sm;
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;
  mavis::LseAcc lt = mavis::lse_init(), lb = mavis::lse_init();
  ArgBest best{-INFINITY, -1, 0.0f};
  for (int64_t col = tid; col < N; col += kNT) {
    const int64_t i = row * N + col;
    const float b = base[i];
    if (isfinite(b)) mavis::lse_push(lb, b);
    if (keep[i]) {
      const float tv = t[i];
      mavis::lse_push(lt, tv);
      best = arg_merge(best, ArgBest{tv + gumbel_at(noise, row, col), col, tv});
    }
  }
  lt = block_lse<kNT>(lt, sm.lse_s);
  lb = block_lse<kNT>(lb, sm.lse_s);
  best = block_arg<kNT>(best, sm.arg_s);
  if (tid != 0) return;
  const int st = status_in[row];
  if (st != 0 || best.col < 0) {
    out_ids[row] = -1;
    out_lt[row] = NAN;
    out_lb[row] = NAN;
    status_out[row] = st != 0 ? st : kRowNoFinite;
    return;
  }
  const float b_tok = base[row * N + best.col];
  out_ids[row] = cand_map != nullptr ? cand_map[row * N + best.col] : best.col;
  out_lt[row] = (best.t - lt.max) - logf(lt.sum);
  out_lb[row] = lse_override != nullptr ? b_tok - lse_override[row] : (b_tok - lb.max) - logf(lb.sum);
  status_out[row] = 0;
}

// Per-row logits error bits of the scaled logits, as the reference's _check_rows sees them.
at::Tensor row_flags(const at::Tensor& base) {
  const at::Tensor nan = at::isnan(base).any(-1).to(at::kInt);
  const at::Tensor pinf = at::isposinf(base).any(-1).to(at::kInt);
  const at::Tensor nofin = at::isfinite(base).any(-1).logical_not().to(at::kInt);
  return nan.mul(kLogitsNaN).add(pinf.mul(kLogitsPosInf)).add(nofin.mul(kRowNoFinite));
}

at::Tensor weight_flags(const at::Tensor& w, int64_t B) {
  const at::Tensor bad = at::isfinite(w).logical_not();
  const at::Tensor rows = w.dim() == 1 ? bad.any().expand({B}) : bad.any(-1);
  return rows.to(at::kInt).mul(kWeightsBad);
}

at::Tensor topk_mask(const at::Tensor& src, int64_t k) {
  const at::Tensor idx = std::get<1>(at::sort(src, /*stable=*/true, /*dim=*/-1, /*descending=*/true)).slice(1, 0, k);
  return at::zeros(src.sizes(), src.options().dtype(at::kBool)).scatter_(1, idx, true);
}

// Nucleus rule of the reference: rank by t descending (stable: ties to the lower column), keep a
// column when the mass ranked strictly before it is < top_p.
at::Tensor apply_nucleus(const at::Tensor& t, const at::Tensor& keep, float top_p) {
  const at::Tensor masked = at::where(keep, t, at::full_like(t, -INFINITY));
  const at::Tensor p = at::softmax(masked, -1);
  const at::Tensor order = std::get<1>(at::sort(masked, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  const at::Tensor p_sorted = at::gather(p, -1, order);
  const at::Tensor before = at::cumsum(p_sorted, -1).sub(p_sorted);
  const at::Tensor nucleus = at::zeros_like(keep).scatter_(-1, order, before.lt(top_p));
  return keep.logical_and(nucleus);
}

Sample3 run_masked_sample(const at::Tensor& t, const at::Tensor& base, const at::Tensor& keep,
                          const NoiseParams& noise, const at::Tensor& cand_map, const at::Tensor& lse_override,
                          at::Tensor& status, cudaStream_t stream) {
  const int64_t B = t.size(0), N = t.size(1);
  auto opts = t.options();
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  const at::Tensor st_in = status.contiguous().clone();
  const at::Tensor t_c = t.contiguous(), base_c = base.contiguous(), keep_c = keep.contiguous();
  masked_sample_kernel<<<static_cast<unsigned>(B), kNT, 0, stream>>>(
      t_c.data_ptr<float>(), base_c.data_ptr<float>(), keep_c.data_ptr<bool>(), N, noise,
      cand_map.defined() ? cand_map.data_ptr<int64_t>() : nullptr,
      lse_override.defined() ? lse_override.data_ptr<float>() : nullptr, st_in.data_ptr<int32_t>(),
      ids.data_ptr<int64_t>(), logp_t.data_ptr<float>(), logp_b.data_ptr<float>(), status.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ids, logp_t, logp_b};
}

}  // namespace

Sample3 tilted_sample_slow(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, float beta,
                           float temperature, int64_t top_k, float top_p, bool topk_on_tilted,
                           const at::Tensor& candidate_ids, const NoiseParams& noise, cudaStream_t stream) {
  const int64_t B = logits.size(0), N = logits.size(1);
  const at::Tensor base = launch_tilt(logits, at::Tensor(), at::Tensor(), 0.0f, temperature, nullptr, stream);
  at::Tensor status = row_flags(base);
  at::Tensor t = base;
  if (values.defined()) {
    at::Tensor wst = at::empty({B}, logits.options().dtype(at::kInt));
    t = launch_tilt(logits, values, weights, beta, temperature, wst.data_ptr<int32_t>(), stream);
    t = at::where(at::isneginf(base), base, t);  // a column the base model bans stays banned
    status = status.bitwise_or(wst);
  }
  const bool restricted = top_k > 0 && top_k < N;
  at::Tensor keep = at::ones({B, N}, logits.options().dtype(at::kBool));
  if (restricted && !topk_on_tilted) keep = topk_mask(base, top_k);
  if (values.defined()) {
    const at::Tensor vbad = keep.logical_and(at::isfinite(base)).logical_and(at::isfinite(t).logical_not()).any(-1);
    status = status.bitwise_or(vbad.to(at::kInt).mul(kValuesBad));
  }
  if (restricted && topk_on_tilted) keep = topk_mask(t, top_k);
  keep = keep.logical_and(at::isfinite(t));
  if (top_p < 1.0f) keep = apply_nucleus(t, keep, top_p);
  status = status.to(at::kInt).contiguous();
  Sample3 res = run_masked_sample(t, base, keep, noise, candidate_ids, at::Tensor(), status, stream);
  check_status(status, stream);
  return res;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates_slow(const at::Tensor& logits, int64_t k,
                                                                    float temperature, at::Tensor& status,
                                                                    cudaStream_t stream) {
  const at::Tensor base = launch_tilt(logits, at::Tensor(), at::Tensor(), 0.0f, temperature, nullptr, stream);
  status.copy_(row_flags(base));
  auto sorted = at::sort(base, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  at::Tensor vals = std::get<0>(sorted).slice(1, 0, k).contiguous();
  at::Tensor idx = std::get<1>(sorted).slice(1, 0, k).contiguous();
  at::Tensor lse = at::logsumexp(base, {-1});
  const at::Tensor bad = status.ne(0);
  vals.masked_fill_(bad.unsqueeze(1), NAN);
  idx.masked_fill_(bad.unsqueeze(1), -1);
  lse.masked_fill_(bad, NAN);
  return {vals, idx, lse};
}

Sample3 guided_tail_slow(const at::Tensor& cand_logits, const at::Tensor& cand_ids, const at::Tensor& lse,
                         const at::Tensor& comb, const at::Tensor& weights, float beta, float top_p,
                         const NoiseParams& noise, at::Tensor& status, cudaStream_t stream) {
  const int64_t B = cand_logits.size(0);
  at::Tensor t = cand_logits.add(comb.mul(static_cast<double>(beta)));
  t = at::where(at::isneginf(cand_logits), cand_logits, t);
  const at::Tensor vbad = at::isfinite(cand_logits).logical_and(at::isfinite(t).logical_not()).any(-1);
  status.bitwise_or_(weight_flags(weights, B).bitwise_or(vbad.to(at::kInt).mul(kValuesBad)));
  at::Tensor keep = at::isfinite(t);
  if (top_p < 1.0f) keep = apply_nucleus(t, keep, top_p);
  return run_masked_sample(t, cand_logits, keep, noise, cand_ids, lse, status, stream);
}

}  // namespace mavis_cuda
