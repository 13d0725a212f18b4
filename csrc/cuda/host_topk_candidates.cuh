// topk_candidates on CUDA, host side: phase 1 (chunk_scan.cu, mode kTopkBase) computes every
// chunk's exact top-k of logits / T and its logsumexp in one pass over the logits; phase 2
// (topk_merge_kernel) merges them per row. Two launches per row tile for k <= 256; larger k takes
// the ATen slow path.
#pragma once

#include "host_scan.cuh"
#include "host_slow_paths.cuh"

namespace mavis_cuda {

// Phases 1-2 of the fused top-k into preallocated outputs (cand_logits [B, k], cand_ids [B, k],
// lse [B], n_finite [B] or undefined, status [B]). logits: [B, V] with contiguous columns.
inline void topk_fused(const at::Tensor& logits, int64_t k, float temperature, at::Tensor& cand_logits,
                       at::Tensor& cand_ids, at::Tensor& lse, at::Tensor* n_finite, at::Tensor& status,
                       cudaStream_t stream) {
  ScanConfig cfg;
  set_scan_inputs(cfg, logits, at::Tensor(), at::Tensor());
  cfg.temperature = temperature;
  cfg.k = static_cast<int>(k);
  cfg.mode = kTopkBase;
  cfg.want_ninf = true;
  ScanWorkspace ws;
  const int64_t tile = plan_scan(cfg, logits, ws);
  for_each_row_tile(cfg.B, tile, [&](int64_t r0, int64_t n) {
    cfg.row0 = r0;
    cfg.rows = n;
    launch_chunk_scan(cfg, stream);
    launch_topk_merge(cfg, cand_logits.data_ptr<float>(), cand_ids.data_ptr<int64_t>(), lse.data_ptr<float>(),
                      n_finite != nullptr ? n_finite->data_ptr<int32_t>() : nullptr, status.data_ptr<int32_t>(),
                      stream);
  });
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates_cuda(const at::Tensor& logits_in, int64_t k,
                                                                           double temperature, bool mark_invalid) {
  mavis::check_logits(logits_in);
  check_cuda(logits_in, "logits");
  mavis::check_temperature(temperature);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  TORCH_CHECK(k >= 1 && k <= V, "k: must satisfy 1 <= k <= V=", V, ", got ", k);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor logits = rows_contiguous(logits_in);
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor status = at::empty({B}, opts.dtype(at::kInt));
  at::Tensor cand_logits = at::empty({B, k}, opts);
  at::Tensor cand_ids = at::empty({B, k}, opts.dtype(at::kLong));
  at::Tensor lse = at::empty({B}, opts);
  if (k > kMaxFastK) {
    topk_candidates_slow(logits, k, static_cast<float>(temperature), cand_logits, cand_ids, lse, status, stream);
  } else {
    topk_fused(logits, k, static_cast<float>(temperature), cand_logits, cand_ids, lse, nullptr, status, stream);
  }
  check_status(status, stream, mark_invalid);
  return {cand_logits, cand_ids, lse};
}

}  // namespace mavis_cuda
