// Value-head GEMVs, one warp per output position (see value_heads.cu).
#pragma once

#include "common.cuh"

namespace mavis_cuda {

// Q-head mode: hidden [B, d], head_weight [m, V, d], head_bias [m, V] (or undefined),
// cand [B, K] int64. With weights ([m] / [B, m] float32) writes out [B, K] = sum_i w_i * value_i,
// else out [B, m, K]. Only the K candidate rows of each head are read. status (int32 [1], zeroed)
// may be nullptr; it receives kCandOutOfRange / kWeightsBad by atomicOr. All tensors contiguous.
void launch_qhead(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& head_bias,
                  const at::Tensor& cand, const at::Tensor& weights, at::Tensor& out, int32_t* status,
                  cudaStream_t stream);

}  // namespace mavis_cuda
