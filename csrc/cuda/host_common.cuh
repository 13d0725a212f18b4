// Host-side helpers of the CUDA entry points: ATen, the status check, dtype codes, alignment and
// noise parameters. Included only by ops_cuda.cu (the one translation unit that pays for ATen).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "device_common.cuh"
#include "op_checks.h"

namespace mavis_cuda {

inline bool host_checks_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MAVIS_CUDA_CHECKS");
    return !(e != nullptr && e[0] == '0');
  }();
  return on;
}

inline bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
  return st != cudaStreamCaptureStatusNone;
}

// Raise the error of highest priority in `bits`, in the order the reference checks them.
inline void raise_status(int bits, const char* values_detail = "NaN or inf in values") {
  TORCH_CHECK(!(bits & kLogitsNaN), "logits: contains NaN");
  TORCH_CHECK(!(bits & kLogitsPosInf), "logits: contains +inf");
  TORCH_CHECK(!(bits & kRowNoFinite), "logits: a row has no finite entry (all -inf)");
  TORCH_CHECK(!(bits & kCandOutOfRange), "candidate_ids: an id is outside [0, V)");
  TORCH_CHECK(!(bits & kWeightsBad), "weights: contains NaN or inf");
  TORCH_CHECK(!(bits & kValuesBad), "values: tilted scores are not finite (", values_detail, ")");
}

// One small D2H copy of the int32 status words (skipped while capturing a CUDA graph: there the
// bad rows carry id -1 / NaN instead).
inline void check_status(const at::Tensor& status, cudaStream_t stream,
                         const char* values_detail = "NaN or inf in values") {
  if (!host_checks_enabled() || stream_is_capturing(stream)) return;
  const int64_t n = status.numel();
  std::vector<int32_t> h(static_cast<size_t>(n));
  C10_CUDA_CHECK(cudaMemcpyAsync(h.data(), status.data_ptr<int32_t>(), n * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, stream));
  C10_CUDA_CHECK(cudaStreamSynchronize(stream));
  int bits = 0;
  for (int32_t v : h) bits |= v;
  raise_status(bits, values_detail);
}


inline int dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return kF32;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "expected float32, float16 or bfloat16, got ", st);
  }
  return kF32;
}

inline NoiseParams make_noise(const at::Tensor& seed, const at::Tensor& offset, int64_t B) {
  NoiseParams np;
  np.seed = seed.data_ptr<int64_t>();
  np.offset = offset.data_ptr<int64_t>();
  np.seed_per_row = seed.numel() == B && B > 1;
  np.offset_per_row = offset.numel() == B && B > 1;
  np.row_in_counter = seed.numel() == 1 && offset.numel() == 1;
  return np;
}

inline int num_sms(int device) {
  return at::cuda::getDeviceProperties(device)->multiProcessorCount;
}

// True when every 8-element granule starting at a column multiple of 8 of every row is 16-byte
// aligned, so it can be read with 16-byte vector loads.
inline bool rows_vec_aligned(const at::Tensor& t, int64_t row_len) {
  const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
  return (p % 16 == 0) && ((row_len * static_cast<int64_t>(t.element_size())) % 16 == 0);
}

inline void check_beta(double beta) { TORCH_CHECK(std::isfinite(beta), "beta: must be finite, got ", beta); }

inline void check_values(const at::Tensor& values, const at::Tensor& logits) {
  mavis::check_float(values, "values");
  mavis::check_dim(values, 3, "values");
  mavis::check_same_device(values, logits, "values");
  TORCH_CHECK(values.size(0) == logits.size(0) && values.size(2) == logits.size(1) && values.size(1) > 0,
              "values: expected shape [B=", logits.size(0), ", m, N=", logits.size(1), "], got ", values.sizes());
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
}

}  // namespace mavis_cuda
