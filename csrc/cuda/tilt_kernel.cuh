// Elementwise tilt (tilt_logits op, and the scaled/tilted rows of the slow paths):
// out[b, n] = logits[b, n] / T + beta * sum_i w[b, i] * values[b, i, n]   (fp32, reference order)
// or, without values, out = logits / T.
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

// Inputs have contiguous columns and are read through their row strides (elements).
struct TiltArgs {
  const void* logits;
  int logits_code;
  int64_t ld_logits;
  const void* values;  // [B, m, N] or nullptr
  int values_code;
  int64_t vs_b, vs_m;
  const float* weights;  // [m] / [B, m] float32 contiguous, or nullptr (no values)
  bool w_per_row;
  int m;
  int64_t B, N;
  float beta, temperature;
  bool vec_logits, vec_values, vec_out;
  float* out;       // [B, N] float32, contiguous
  int32_t* status;  // [B] (weights check) or nullptr
};

void launch_tilt_kernel(const TiltArgs& a, cudaStream_t stream);

}  // namespace mavis_cuda
