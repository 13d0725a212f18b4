// guided_sample on CUDA, host side: the fused MAVIS step for Q-head value models, four launches,
// no host synchronisation except the optional status check:
//   1. chunk_scan (kTopkBase): split-vocabulary top-k of logits / T and logsumexp, one pass;
//   2. topk_merge_kernel: per row, the sorted top-k candidates, lse, number of finite candidates;
//   3. head_kernel (Q-head mode with weights): one warp per (row, candidate) gathers the
//      candidate's row of each of the m heads (16-byte loads) and folds bias and weights;
//   4. guided_tail_kernel: t = cand + beta * comb, nucleus, Gumbel-max with the candidate position
//      as noise column, logp_base = cand - lse.
// top_k > 256: the ATen slow path (host_slow_paths.cuh).
#pragma once

#include "guided_tail.cuh"
#include "host_slow_paths.cuh"
#include "host_topk_candidates.cuh"
#include "host_value_heads.cuh"

namespace mavis_cuda {

inline Sample3 guided_sample_cuda(const at::Tensor& logits_in, const at::Tensor& hidden_in,
                                  const at::Tensor& head_weight_in, const c10::optional<at::Tensor>& head_bias_in,
                                  const at::Tensor& weights_in, double beta, int64_t top_k, double temperature,
                                  double top_p, const at::Tensor& seed_in, const at::Tensor& offset_in,
                                  bool mark_invalid) {
  mavis::check_logits(logits_in);
  check_cuda(logits_in, "logits");
  mavis::check_temperature(temperature);
  mavis::check_top_p(top_p);
  check_beta(beta);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  mavis::check_float(hidden_in, "hidden");
  mavis::check_dim(hidden_in, 2, "hidden");
  mavis::check_same_device(hidden_in, logits_in, "hidden");
  TORCH_CHECK(hidden_in.size(0) == B, "hidden: expected ", B, " rows (one per logits row), got ", hidden_in.size(0));
  const int64_t d = hidden_in.size(1);
  mavis::check_float(head_weight_in, "head_weight");
  mavis::check_dim(head_weight_in, 3, "head_weight");
  mavis::check_same_device(head_weight_in, logits_in, "head_weight");
  const int64_t m = head_weight_in.size(0);
  TORCH_CHECK(m > 0, "head_weight: no objectives (m == 0)");
  TORCH_CHECK(head_weight_in.size(1) == V && head_weight_in.size(2) == d, "head_weight: expected shape [m, V=", V,
              ", d=", d, "], got ", head_weight_in.sizes());
  if (head_bias_in.has_value()) {
    mavis::check_float(*head_bias_in, "head_bias");
    mavis::check_same_device(*head_bias_in, logits_in, "head_bias");
    TORCH_CHECK(head_bias_in->dim() == 2 && head_bias_in->size(0) == m && head_bias_in->size(1) == V,
                "head_bias: expected shape [", m, ", ", V, "], got ", head_bias_in->sizes());
  }
  mavis::check_weights(weights_in, B, m, logits_in);
  TORCH_CHECK(top_k >= 1 && top_k <= V, "top_k: must satisfy 1 <= top_k <= V=", V, ", got ", top_k);
  mavis::check_seed(seed_in, offset_in, B, logits_in);

  const c10::cuda::CUDAGuard guard(logits_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // hidden, head_weight and head_bias are read through their strides (never copied: the head can
  // be gigabytes); logits need contiguous columns only.
  const at::Tensor logits = rows_contiguous(logits_in);
  const at::Tensor bias = head_bias_in.has_value() ? *head_bias_in : at::Tensor();
  const at::Tensor weights = weights_in.contiguous();
  const at::Tensor seed = seed_in.contiguous(), offset = offset_in.contiguous();
  const NoiseParams noise = make_noise(seed, offset, B);
  const float temp_f = static_cast<float>(temperature), beta_f = static_cast<float>(beta);
  auto opts = logits.options().dtype(at::kFloat);
  const char* detail = "NaN or inf in hidden, head_weight or head_bias";
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  at::Tensor status = at::empty({B}, opts.dtype(at::kInt));

  if (top_k > kMaxFastK) {
    guided_sample_slow(logits, hidden_in, head_weight_in, bias, weights, beta_f, top_k, temp_f, top_p, noise, ids,
                       logp_t, logp_b, status, stream);
    check_status(status, stream, mark_invalid, detail);
    return {ids, logp_t, logp_b};
  }

  at::Tensor cand_logits = at::empty({B, top_k}, opts);
  at::Tensor cand_ids = at::empty({B, top_k}, opts.dtype(at::kLong));
  at::Tensor lse = at::empty({B}, opts);
  at::Tensor n_finite = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor merge_status = at::empty({B}, opts.dtype(at::kInt));
  topk_fused(logits, top_k, temp_f, cand_logits, cand_ids, lse, &n_finite, merge_status, stream);
  // Rows with a logits error carry id -1 here: head_kernel skips out-of-range ids (NaN result), and
  // the tail kernel reports the merge status of those rows.
  at::Tensor comb = at::empty({B, top_k}, opts);
  launch_qhead(hidden_in, head_weight_in, bias, cand_ids, weights, comb, nullptr, stream);

  GuidedTailArgs a{cand_logits.data_ptr<float>(), cand_ids.data_ptr<int64_t>(), lse.data_ptr<float>(),
                   n_finite.data_ptr<int32_t>(), merge_status.data_ptr<int32_t>(), comb.data_ptr<float>(),
                   weights.data_ptr<float>(), weights.dim() == 2, static_cast<int>(m), static_cast<int>(top_k), beta_f,
                   top_p, noise, ids.data_ptr<int64_t>(), logp_t.data_ptr<float>(), logp_b.data_ptr<float>(),
                   status.data_ptr<int32_t>()};
  launch_guided_tail(a, B, stream);
  check_status(status, stream, mark_invalid, detail);
  return {ids, logp_t, logp_b};
}

}  // namespace mavis_cuda
