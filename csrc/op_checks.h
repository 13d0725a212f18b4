// Argument checks shared by the CPU and CUDA implementations, for callers that reach
// torch.ops.mavis.* directly (the Python wrappers in mavis_ext/ops.py check first, with the same
// argument names). Every message names the offending argument.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace mavis {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": on ", t.device(), " but expected ", ref.device());
}

inline void check_logits(const at::Tensor& logits) {
  check_float(logits, "logits");
  check_dim(logits, 2, "logits");
  TORCH_CHECK(logits.size(0) > 0, "logits: empty batch (B == 0)");
  TORCH_CHECK(logits.size(1) > 0, "logits: empty last dimension (N == 0)");
}

inline void check_temperature(double temperature) {
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "temperature: must be a finite number > 0, got ",
              temperature);
}

inline void check_top_p(double top_p) {
  TORCH_CHECK(top_p > 0.0 && top_p <= 1.0, "top_p: must be in (0, 1], got ", top_p);
}

// weights: float32, [m] or [B, m].
inline void check_weights(const at::Tensor& w, int64_t B, int64_t m, const at::Tensor& ref) {
  TORCH_CHECK(w.scalar_type() == at::kFloat, "weights: expected float32, got ", w.scalar_type());
  check_same_device(w, ref, "weights");
  TORCH_CHECK((w.dim() == 1 && w.size(0) == m) || (w.dim() == 2 && w.size(0) == B && w.size(1) == m),
              "weights: expected shape [", m, "] or [", B, ", ", m, "], got ", w.sizes());
}

// seed/offset: int64, [1] or [B].
inline void check_seed(const at::Tensor& seed, const at::Tensor& offset, int64_t B, const at::Tensor& ref) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.dim() == 1 && (seed.numel() == 1 || seed.numel() == B),
              "seed: expected an int64 tensor of 1 or B=", B, " elements, got ", seed.scalar_type(), " ",
              seed.sizes());
  TORCH_CHECK(offset.scalar_type() == at::kLong && offset.dim() == 1 &&
                  (offset.numel() == 1 || offset.numel() == B),
              "offset: expected an int64 tensor of 1 or B=", B, " elements, got ", offset.scalar_type(), " ",
              offset.sizes());
  check_same_device(seed, ref, "seed");
  check_same_device(offset, ref, "offset");
}

}  // namespace mavis
