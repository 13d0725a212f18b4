// Slow paths for the cases the fused split-vocabulary kernels do not cover, built from ATen ops
// (stable sort, softmax, cumsum, scatter: all on the device, no host synchronisation, so they stay
// CUDA-graph capturable) plus one masked Gumbel-max kernel:
//   * tilted_sample with 256 < top_k < N, or with no top-k (top_k == 0 or N) and top_p < 1
//     (nucleus over the whole vocabulary needs a full sort);
//   * topk_candidates with k > 256;
//   * guided_sample with top_k > 256.
#pragma once

#include <tuple>

#include "common.cuh"

namespace mavis_cuda {

using Sample3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Tensors are contiguous, on the current device; weights float32 or undefined.
Sample3 tilted_sample_slow(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, float beta,
                           float temperature, int64_t top_k, float top_p, bool topk_on_tilted,
                           const at::Tensor& candidate_ids, const NoiseParams& noise, cudaStream_t stream);

// Returns (cand_logits, cand_ids, lse) and fills `status` (int32 [B]) without checking it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates_slow(const at::Tensor& logits, int64_t k,
                                                                    float temperature, at::Tensor& status,
                                                                    cudaStream_t stream);

// guided_sample's last step over K > 256 candidates: t = cand + beta * comb, nucleus, Gumbel-max
// with the candidate position as noise column; logp_base = cand[pos] - lse. `status` carries the
// errors found so far (per row) and is checked at the end.
Sample3 guided_tail_slow(const at::Tensor& cand_logits, const at::Tensor& cand_ids, const at::Tensor& lse,
                         const at::Tensor& comb, const at::Tensor& weights, float beta, float top_p,
                         const NoiseParams& noise, at::Tensor& status, cudaStream_t stream);

}  // namespace mavis_cuda
