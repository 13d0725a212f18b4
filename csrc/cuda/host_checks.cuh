// Host-side argument checks of the CUDA entry points (callers may reach torch.ops.mavis.* without
// the Python wrappers). Same names and messages as the CPU kernels; data-dependent checks happen
// on the device (status words, see common.cuh).
#pragma once

#include "common.cuh"

namespace mavis_cuda {

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
