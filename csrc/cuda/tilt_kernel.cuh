// Elementwise tilt (tilt_logits op, and the scaled/tilted rows of the slow paths):
// out[b, n] = logits[b, n] / T + beta * sum_i w[b, i] * values[b, i, n]   (fp32, reference order)
// or, without values, out = logits / T.
#pragma once

#include "common.cuh"

namespace mavis_cuda {

// values/weights may be undefined (then out = logits / T). status: int32 [B] (weights check) or
// nullptr. Returns the fp32 [B, N] output.
at::Tensor launch_tilt(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, float beta,
                       float temperature, int32_t* status, cudaStream_t stream);

}  // namespace mavis_cuda
