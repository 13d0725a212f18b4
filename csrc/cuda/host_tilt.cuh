// Host side of tilt_logits (and the scaled / tilted rows the slow paths need).
#pragma once

#include "host_common.cuh"
#include "tilt_kernel.cuh"

namespace mavis_cuda {

// values/weights may be undefined (then out = logits / T). status: int32 [B] (weights check) or
// nullptr. logits / values: contiguous columns (row strides are passed); weights contiguous.
// Returns the fp32 [B, N] output (contiguous).
inline at::Tensor launch_tilt(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights,
                              float beta, float temperature, int32_t* status, cudaStream_t stream) {
  const int64_t B = logits.size(0), N = logits.size(1);
  at::Tensor out = at::empty({B, N}, logits.options().dtype(at::kFloat));
  const bool has_v = values.defined();
  TiltArgs a{};
  a.logits = logits.data_ptr();
  a.logits_code = dtype_code(logits.scalar_type());
  a.ld_logits = logits.stride(0);
  a.values = has_v ? values.data_ptr() : nullptr;
  a.values_code = has_v ? dtype_code(values.scalar_type()) : kF32;
  a.vs_b = has_v ? values.stride(0) : 0;
  a.vs_m = has_v ? values.stride(1) : 0;
  a.weights = weights.defined() ? weights.data_ptr<float>() : nullptr;
  a.w_per_row = weights.defined() && weights.dim() == 2;
  a.m = has_v ? static_cast<int>(values.size(1)) : 0;
  a.B = B;
  a.N = N;
  a.beta = beta;
  a.temperature = temperature;
  a.vec_logits = rows_vec_aligned(logits);
  a.vec_values = has_v && rows_vec_aligned(values);
  a.vec_out = rows_vec_aligned(out);
  a.out = out.data_ptr<float>();
  a.status = status;
  launch_tilt_kernel(a, stream);
  return out;
}

inline at::Tensor tilt_logits_cuda(const at::Tensor& logits_in, const at::Tensor& values_in,
                                   const at::Tensor& weights_in, double beta, double temperature) {
  mavis::check_logits(logits_in);
  check_cuda(logits_in, "logits");
  mavis::check_temperature(temperature);
  check_values(values_in, logits_in);
  const int64_t B = logits_in.size(0);
  mavis::check_weights(weights_in, B, values_in.size(1), logits_in);
  check_beta(beta);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor logits = rows_contiguous(logits_in), values = rows_contiguous(values_in);
  const at::Tensor w = weights_in.contiguous();
  at::Tensor status = at::empty({B}, logits.options().dtype(at::kInt));
  at::Tensor out = launch_tilt(logits, values, w, static_cast<float>(beta), static_cast<float>(temperature),
                               status.data_ptr<int32_t>(), stream);
  check_status(status, stream, /*mark_invalid=*/false);
  return out;
}

}  // namespace mavis_cuda
