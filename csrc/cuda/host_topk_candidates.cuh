// topk_candidates on CUDA, host side: phase 1 (chunk_scan.cu, mode kTopkBase) computes every
// chunk's exact top-k of logits / T and its logsumexp in one pass over the logits; phase 2
// (topk_merge_kernel) merges them per row. Two launches for k <= 256; larger k takes the ATen slow
// path.
#pragma once

#include "host_scan.cuh"
#include "host_slow_paths.cuh"

namespace mavis_cuda {

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates_cuda(const at::Tensor& logits_in, int64_t k,
                                                                           double temperature) {
  mavis::check_logits(logits_in);
  check_cuda(logits_in, "logits");
  mavis::check_temperature(temperature);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  TORCH_CHECK(k >= 1 && k <= V, "k: must satisfy 1 <= k <= V=", V, ", got ", k);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor logits = logits_in.contiguous();
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor status = at::empty({B}, opts.dtype(at::kInt));
  if (k > kMaxFastK) {
    auto res = topk_candidates_slow(logits, k, static_cast<float>(temperature), status, stream);
    check_status(status, stream);
    return res;
  }
  ScanConfig cfg;
  cfg.logits = logits.data_ptr();
  cfg.logits_code = dtype_code(logits.scalar_type());
  cfg.vec_logits = rows_vec_aligned(logits, V);
  cfg.B = B;
  cfg.N = V;
  cfg.temperature = static_cast<float>(temperature);
  cfg.k = static_cast<int>(k);
  cfg.mode = kTopkBase;
  const ScanWorkspace ws = plan_scan(cfg, logits);
  launch_chunk_scan(cfg, stream);
  at::Tensor cand_logits = at::empty({B, k}, opts);
  at::Tensor cand_ids = at::empty({B, k}, opts.dtype(at::kLong));
  at::Tensor lse = at::empty({B}, opts);
  launch_topk_merge(cfg, cand_logits.data_ptr<float>(), cand_ids.data_ptr<int64_t>(), lse.data_ptr<float>(), nullptr,
                    status.data_ptr<int32_t>(), stream);
  check_status(status, stream);
  return {cand_logits, cand_ids, lse};
}

}  // namespace mavis_cuda
