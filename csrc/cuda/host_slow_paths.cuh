// Slow paths, host side: the reference algorithm written with ATen ops on the device (stable sort,
// softmax, cumsum, scatter: no host synchronisation, so still CUDA-graph capturable) plus
// masked_sample_kernel for the draw. They cover what the fused kernels do not:
//   * tilted_sample with 256 < top_k < N, or with no top-k (top_k == 0 or N) and top_p < 1
//     (a nucleus over the whole vocabulary needs a full sort);
//   * topk_candidates with k > 256;
//   * guided_sample with top_k > 256 (steps 1-2 and 4).
#pragma once

#include <tuple>

#include "host_common.cuh"
#include "host_tilt.cuh"
#include "masked_sample.cuh"

namespace mavis_cuda {

using Sample3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Per-row logits error bits of the scaled logits, as the reference's _check_rows sees them.
inline at::Tensor row_flags(const at::Tensor& base) {
  const at::Tensor nan = at::isnan(base).any(-1).to(at::kInt);
  const at::Tensor pinf = at::isposinf(base).any(-1).to(at::kInt);
  const at::Tensor nofin = at::isfinite(base).any(-1).logical_not().to(at::kInt);
  return nan.mul(kLogitsNaN).add(pinf.mul(kLogitsPosInf)).add(nofin.mul(kRowNoFinite));
}

inline at::Tensor weight_flags(const at::Tensor& w, int64_t B) {
  const at::Tensor bad = at::isfinite(w).logical_not();
  const at::Tensor rows = w.dim() == 1 ? bad.any().expand({B}) : bad.any(-1);
  return rows.to(at::kInt).mul(kWeightsBad);
}

inline at::Tensor topk_mask(const at::Tensor& src, int64_t k) {
  const at::Tensor idx = std::get<1>(at::sort(src, /*stable=*/true, /*dim=*/-1, /*descending=*/true)).slice(1, 0, k);
  return at::zeros(src.sizes(), src.options().dtype(at::kBool)).scatter_(1, idx, true);
}

// Nucleus rule of the reference: rank by t descending (stable: ties to the lower column), keep a
// column when the mass ranked strictly before it is < top_p.
inline at::Tensor apply_nucleus(const at::Tensor& t, const at::Tensor& keep, float top_p) {
  const at::Tensor masked = at::where(keep, t, at::full_like(t, -INFINITY));
  const at::Tensor p = at::softmax(masked, -1);
  const at::Tensor order = std::get<1>(at::sort(masked, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  const at::Tensor p_sorted = at::gather(p, -1, order);
  const at::Tensor before = at::cumsum(p_sorted, -1).sub(p_sorted);
  const at::Tensor nucleus = at::zeros_like(keep).scatter_(-1, order, before.lt(top_p));
  return keep.logical_and(nucleus);
}

inline Sample3 run_masked_sample(const at::Tensor& t, const at::Tensor& base, const at::Tensor& keep,
                          const NoiseParams& noise, const at::Tensor& cand_map, const at::Tensor& lse_override,
                          at::Tensor& status, cudaStream_t stream) {
  const int64_t B = t.size(0), N = t.size(1);
  auto opts = t.options();
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  const at::Tensor st_in = status.contiguous().clone();
  const at::Tensor t_c = t.contiguous(), base_c = base.contiguous(), keep_c = keep.contiguous();
  MaskedSampleArgs a{};
  a.t = t_c.data_ptr<float>();
  a.base = base_c.data_ptr<float>();
  a.keep = keep_c.data_ptr<bool>();
  a.B = B;
  a.N = N;
  a.noise = noise;
  a.cand_map = cand_map.defined() ? cand_map.data_ptr<int64_t>() : nullptr;
  a.lse_override = lse_override.defined() ? lse_override.data_ptr<float>() : nullptr;
  a.status_in = st_in.data_ptr<int32_t>();
  a.out_ids = ids.data_ptr<int64_t>();
  a.out_lt = logp_t.data_ptr<float>();
  a.out_lb = logp_b.data_ptr<float>();
  a.status_out = status.data_ptr<int32_t>();
  launch_masked_sample(a, stream);
  return {ids, logp_t, logp_b};
}

inline Sample3 tilted_sample_slow(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, float beta,
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

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates_slow(const at::Tensor& logits, int64_t k,
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

inline Sample3 guided_tail_slow(const at::Tensor& cand_logits, const at::Tensor& cand_ids, const at::Tensor& lse,
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
