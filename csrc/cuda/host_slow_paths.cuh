// Slow paths, host side: the reference algorithm written with ATen ops on the device (stable sort,
// softmax, cumsum, scatter: no host synchronisation, so still CUDA-graph capturable) plus
// masked_sample_kernel for the draw. They cover what the fused kernels do not:
//   * tilted_sample with 256 < top_k < N, or with no top-k (top_k == 0 or N) and top_p < 1
//     (a nucleus over the whole vocabulary needs a full sort);
//   * topk_candidates with k > 256;
//   * guided_sample with top_k > 256.
// Memory: the rows are processed in tiles of at most kSlowTileElems elements (rows x columns), so
// the temporaries (sort keys and int64 indices, softmax, cumsum, masks: about 40 bytes per element
// at the peak) stay near 700 MB whatever the batch; a single row longer than kSlowTileElems is
// one tile on its own.
#pragma once

#include <tuple>

#include "host_common.cuh"
#include "host_tilt.cuh"
#include "host_value_heads.cuh"
#include "masked_sample.cuh"

namespace mavis_cuda {

using Sample3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

constexpr int64_t kSlowTileElems = int64_t{1} << 24;

inline int64_t slow_tile_rows(int64_t N) {
  const int64_t rows = kSlowTileElems / (N > 0 ? N : 1);
  return rows < 1 ? 1 : (rows > kMaxGridY ? kMaxGridY : rows);
}

// Per-row logits error bits of the scaled logits, as the reference's _check_rows sees them.
inline at::Tensor row_flags(const at::Tensor& base) {
  const at::Tensor nan = at::isnan(base).any(-1).to(at::kInt);
  const at::Tensor pinf = at::isposinf(base).any(-1).to(at::kInt);
  const at::Tensor nofin = at::isfinite(base).any(-1).logical_not().to(at::kInt);
  return nan.mul(kLogitsNaN).add(pinf.mul(kLogitsPosInf)).add(nofin.mul(kRowNoFinite));
}

inline at::Tensor weight_flags(const at::Tensor& w, int64_t rows) {
  const at::Tensor bad = at::isfinite(w).logical_not();
  const at::Tensor per_row = w.dim() == 1 ? bad.any().expand({rows}) : bad.any(-1);
  return per_row.to(at::kInt).mul(kWeightsBad);
}

inline at::Tensor topk_mask(const at::Tensor& src, int64_t k) {
  const at::Tensor idx = std::get<1>(at::sort(src, /*stable=*/true, /*dim=*/-1, /*descending=*/true)).slice(1, 0, k);
  return at::zeros(src.sizes(), src.options().dtype(at::kBool)).scatter_(1, idx, true);
}

// Nucleus rule (as the CPU kernel, csrc/cpu/sampling.h, and sample_tail.cuh): rank by t
// descending (stable: ties to the lower column); keep a column when the probability mass ranked
// strictly before it is < top_p. Masses, their prefix sums and the comparison are in double.
inline at::Tensor apply_nucleus(const at::Tensor& t, const at::Tensor& keep, double top_p) {
  const at::Tensor masked = at::where(keep, t, at::full_like(t, -INFINITY));
  const at::Tensor order = std::get<1>(at::sort(masked, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  const at::Tensor p_sorted = at::gather(at::softmax(masked.to(at::kDouble), -1), -1, order);
  // exclusive prefix: the mass ranked strictly before each column (no cumsum - p cancellation)
  const at::Tensor incl = at::cumsum(p_sorted, -1);
  const at::Tensor before = at::cat({at::zeros_like(incl.slice(1, 0, 1)), incl.slice(1, 0, incl.size(1) - 1)}, 1);
  const at::Tensor nucleus = at::zeros_like(keep).scatter_(-1, order, before.lt(top_p));
  return keep.logical_and(nucleus);
}

// Gumbel-max over `keep` for the row tile starting at batch row r0. t, base: fp32 [n, N]; keep:
// bool [n, N]; cand_map: [n, N] int64 or undefined; lse_override: [n] or undefined; status_in:
// int32 [n] (errors so far); outputs (ids, logp_t, logp_b, status_out): the tile's [n] slices.
inline void run_masked_sample(const at::Tensor& t, const at::Tensor& base, const at::Tensor& keep,
                              const NoiseParams& noise, int64_t r0, const at::Tensor& cand_map,
                              const at::Tensor& lse_override, const at::Tensor& status_in, at::Tensor ids,
                              at::Tensor logp_t, at::Tensor logp_b, at::Tensor status_out, cudaStream_t stream) {
  const at::Tensor t_c = t.contiguous(), base_c = base.contiguous(), keep_c = keep.contiguous();
  const at::Tensor st_in = status_in.to(at::kInt).contiguous();
  const at::Tensor cm = cand_map.defined() ? cand_map.contiguous() : at::Tensor();
  const at::Tensor lo = lse_override.defined() ? lse_override.contiguous() : at::Tensor();
  MaskedSampleArgs a{};
  a.t = t_c.data_ptr<float>();
  a.base = base_c.data_ptr<float>();
  a.keep = keep_c.data_ptr<bool>();
  a.rows = t.size(0);
  a.N = t.size(1);
  a.noise_row0 = r0;
  a.noise = noise;
  a.cand_map = cm.defined() ? cm.data_ptr<int64_t>() : nullptr;
  a.lse_override = lo.defined() ? lo.data_ptr<float>() : nullptr;
  a.status_in = st_in.data_ptr<int32_t>();
  a.out_ids = ids.data_ptr<int64_t>();
  a.out_lt = logp_t.data_ptr<float>();
  a.out_lb = logp_b.data_ptr<float>();
  a.status_out = status_out.data_ptr<int32_t>();
  launch_masked_sample(a, stream);
}

// tilted_sample's slow path into preallocated [B] outputs. logits / values: contiguous columns;
// weights contiguous; candidate_ids contiguous or undefined.
inline void tilted_sample_slow(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights,
                               float beta, float temperature, int64_t top_k, double top_p, bool topk_on_tilted,
                               const at::Tensor& candidate_ids, const NoiseParams& noise, at::Tensor& ids,
                               at::Tensor& logp_t, at::Tensor& logp_b, at::Tensor& status, cudaStream_t stream) {
  const int64_t B = logits.size(0), N = logits.size(1);
  const bool restricted = top_k > 0 && top_k < N;
  for_each_row_tile(B, slow_tile_rows(N), [&](int64_t r0, int64_t n) {
    const at::Tensor lg = logits.narrow(0, r0, n);
    const at::Tensor base = launch_tilt(lg, at::Tensor(), at::Tensor(), 0.0f, temperature, nullptr, stream);
    at::Tensor st = row_flags(base);
    at::Tensor t = base;
    if (values.defined()) {
      const at::Tensor w = weights.dim() == 2 ? weights.narrow(0, r0, n) : weights;
      at::Tensor wst = at::empty({n}, logits.options().dtype(at::kInt));
      t = launch_tilt(lg, values.narrow(0, r0, n), w, beta, temperature, wst.data_ptr<int32_t>(), stream);
      t = at::where(at::isneginf(base), base, t);  // a column the base model bans stays banned
      st = st.bitwise_or(wst);
    }
    at::Tensor keep = at::ones({n, N}, logits.options().dtype(at::kBool));
    if (restricted && !topk_on_tilted) keep = topk_mask(base, top_k);
    if (values.defined()) {
      const at::Tensor vbad = keep.logical_and(at::isfinite(base)).logical_and(at::isfinite(t).logical_not()).any(-1);
      st = st.bitwise_or(vbad.to(at::kInt).mul(kValuesBad));
    }
    if (restricted && topk_on_tilted) keep = topk_mask(t, top_k);
    keep = keep.logical_and(at::isfinite(t));
    if (top_p < 1.0) keep = apply_nucleus(t, keep, top_p);
    const at::Tensor cm = candidate_ids.defined() ? candidate_ids.narrow(0, r0, n) : at::Tensor();
    run_masked_sample(t, base, keep, noise, r0, cm, at::Tensor(), st, ids.narrow(0, r0, n), logp_t.narrow(0, r0, n),
                      logp_b.narrow(0, r0, n), status.narrow(0, r0, n), stream);
  });
}

// topk_candidates' slow path (k > 256) for the rows [r0, r0 + n) of `logits` into the [n, k] / [n]
// tensors given (views or fresh). Error rows: ids -1, NaN logits and lse.
inline void topk_slow_tile(const at::Tensor& logits, int64_t r0, int64_t n, int64_t k, float temperature,
                           at::Tensor vals_out, at::Tensor ids_out, at::Tensor lse_out, at::Tensor status_out,
                           cudaStream_t stream) {
  const at::Tensor base =
      launch_tilt(logits.narrow(0, r0, n), at::Tensor(), at::Tensor(), 0.0f, temperature, nullptr, stream);
  const at::Tensor st = row_flags(base);
  status_out.copy_(st);
  auto sorted = at::sort(base, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
  const at::Tensor bad = st.ne(0);
  vals_out.copy_(std::get<0>(sorted).slice(1, 0, k).masked_fill(bad.unsqueeze(1), NAN));
  ids_out.copy_(std::get<1>(sorted).slice(1, 0, k).masked_fill(bad.unsqueeze(1), -1));
  lse_out.copy_(at::logsumexp(base, {-1}).masked_fill(bad, NAN));
}

inline void topk_candidates_slow(const at::Tensor& logits, int64_t k, float temperature, at::Tensor& vals,
                                 at::Tensor& ids, at::Tensor& lse, at::Tensor& status, cudaStream_t stream) {
  for_each_row_tile(logits.size(0), slow_tile_rows(logits.size(1)), [&](int64_t r0, int64_t n) {
    topk_slow_tile(logits, r0, n, k, temperature, vals.narrow(0, r0, n), ids.narrow(0, r0, n), lse.narrow(0, r0, n),
                   status.narrow(0, r0, n), stream);
  });
}

// guided_sample's slow path (top_k > 256), per row tile: the top-k candidates, the Q-head
// gather-GEMV of the candidates, t = cand + beta * comb, nucleus, Gumbel-max with the candidate
// position as noise column, logp_base = cand - lse. hidden / W / bias are read through their
// strides; weights contiguous.
inline void guided_sample_slow(const at::Tensor& logits, const at::Tensor& hidden, const at::Tensor& W,
                               const at::Tensor& bias, const at::Tensor& weights, float beta, int64_t top_k,
                               float temperature, double top_p, const NoiseParams& noise, at::Tensor& ids,
                               at::Tensor& logp_t, at::Tensor& logp_b, at::Tensor& status, cudaStream_t stream) {
  auto opts = logits.options().dtype(at::kFloat);
  for_each_row_tile(logits.size(0), slow_tile_rows(logits.size(1)), [&](int64_t r0, int64_t n) {
    at::Tensor cl = at::empty({n, top_k}, opts), ci = at::empty({n, top_k}, opts.dtype(at::kLong));
    at::Tensor lse = at::empty({n}, opts), st = at::empty({n}, opts.dtype(at::kInt));
    topk_slow_tile(logits, r0, n, top_k, temperature, cl, ci, lse, st, stream);
    const at::Tensor w = weights.dim() == 2 ? weights.narrow(0, r0, n) : weights;
    at::Tensor comb = at::empty({n, top_k}, opts);
    // error rows carry ids -1: head_kernel skips them (NaN), their status is already set
    launch_qhead(hidden.narrow(0, r0, n), W, bias, ci, w, comb, nullptr, stream);
    at::Tensor t = cl.add(comb.mul(static_cast<double>(beta)));  // cand + (beta * comb), fp32, two roundings
    t = at::where(at::isneginf(cl), cl, t);
    const at::Tensor vbad = at::isfinite(cl).logical_and(at::isfinite(t).logical_not()).any(-1);
    st = st.bitwise_or(weight_flags(w, n)).bitwise_or(vbad.to(at::kInt).mul(kValuesBad));
    at::Tensor keep = at::isfinite(t);
    if (top_p < 1.0) keep = apply_nucleus(t, keep, top_p);
    run_masked_sample(t, cl, keep, noise, r0, ci, lse, st, ids.narrow(0, r0, n), logp_t.narrow(0, r0, n),
                      logp_b.narrow(0, r0, n), status.narrow(0, r0, n), stream);
  });
}

}  // namespace mavis_cuda
