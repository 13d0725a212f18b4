// tilted_sample on CUDA, host side.
//
// Fast paths (two launches, no host synchronisation except the optional status check):
//   phase 1  chunk_scan (chunk_scan.cu): split-vocabulary pass over the logits (and the values in
//            the tilted / full-vocab modes);
//   phase 2  sample_merge (sample_merge.cu): per row, merge, keep set, nucleus, Gumbel-max draw.
// Slow paths (host_slow_paths.cuh): 256 < top_k < N, and top_p < 1 without top-k.
#pragma once

#include "host_scan.cuh"
#include "host_slow_paths.cuh"
#include "sample_merge.cuh"

namespace mavis_cuda {

inline Sample3 tilted_sample_cuda(const at::Tensor& logits_in, const c10::optional<at::Tensor>& values_in,
                                  const c10::optional<at::Tensor>& weights_in, double beta, double temperature,
                                  int64_t top_k, double top_p, bool topk_on_tilted,
                                  const c10::optional<at::Tensor>& candidate_ids_in, const at::Tensor& seed_in,
                                  const at::Tensor& offset_in, bool mark_invalid) {
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
  const at::Tensor logits = rows_contiguous(logits_in);
  const at::Tensor values = has_values ? rows_contiguous(*values_in) : at::Tensor();
  const at::Tensor weights = has_values ? weights_in->contiguous() : at::Tensor();
  const at::Tensor cand_map = candidate_ids_in.has_value() ? candidate_ids_in->contiguous() : at::Tensor();
  const at::Tensor seed = seed_in.contiguous(), offset = offset_in.contiguous();
  const NoiseParams noise = make_noise(seed, offset, B);
  const bool restricted = top_k > 0 && top_k < N;
  const float temp_f = static_cast<float>(temperature), beta_f = static_cast<float>(beta);

  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  at::Tensor status = at::empty({B}, opts.dtype(at::kInt));

  // top_p is tested in double here and compared in double in every kernel (one rule, one precision)
  if ((restricted && top_k > kMaxFastK) || (!restricted && top_p < 1.0)) {
    tilted_sample_slow(logits, values, weights, beta_f, temp_f, top_k, top_p, topk_on_tilted, cand_map, noise, ids,
                       logp_t, logp_b, status, stream);
    check_status(status, stream, mark_invalid);
    return {ids, logp_t, logp_b};
  }

  ScanConfig cfg;
  set_scan_inputs(cfg, logits, values, weights);
  cfg.temperature = temp_f;
  cfg.beta = beta_f;
  cfg.k = restricted ? static_cast<int>(top_k) : 0;
  // without values the tilted scores are the scaled logits: top-k "on tilted" is top-k on base
  cfg.mode = !restricted ? kFullGumbel : ((topk_on_tilted && has_values) ? kTopkTilted : kTopkBase);
  cfg.noise = noise;
  ScanWorkspace ws;
  const int64_t tile = plan_scan(cfg, logits, ws);
  for_each_row_tile(B, tile, [&](int64_t r0, int64_t n) {
    cfg.row0 = r0;
    cfg.rows = n;
    launch_chunk_scan(cfg, stream);
    const SampleArgs a{cfg,
                       top_p,
                       cand_map.defined() ? cand_map.data_ptr<int64_t>() : nullptr,
                       ids.data_ptr<int64_t>(),
                       logp_t.data_ptr<float>(),
                       logp_b.data_ptr<float>(),
                       status.data_ptr<int32_t>()};
    launch_sample_merge(a, stream);
  });
  check_status(status, stream, mark_invalid);
  return {ids, logp_t, logp_b};
}

}  // namespace mavis_cuda
