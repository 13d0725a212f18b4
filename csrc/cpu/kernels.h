// CPU implementations of the torch.ops.mavis schemas (csrc/ops.cpp), registered in register_cpu.cpp.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace mavis {
namespace cpu {

using OptTensor = c10::optional<at::Tensor>;
using Sample3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates(const at::Tensor& logits, int64_t k,
                                                               double temperature, bool mark_invalid);

at::Tensor value_heads(const at::Tensor& hidden, const at::Tensor& head_weight, const OptTensor& head_bias,
                       const OptTensor& candidate_ids, const OptTensor& weights);

at::Tensor tilt_logits(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, double beta,
                       double temperature);

Sample3 tilted_sample(const at::Tensor& logits, const OptTensor& values, const OptTensor& weights, double beta,
                      double temperature, int64_t top_k, double top_p, bool topk_on_tilted,
                      const OptTensor& candidate_ids, const at::Tensor& seed, const at::Tensor& offset,
                      bool mark_invalid);

Sample3 guided_sample(const at::Tensor& logits, const at::Tensor& hidden, const at::Tensor& head_weight,
                      const OptTensor& head_bias, const at::Tensor& weights, double beta, int64_t top_k,
                      double temperature, double top_p, const at::Tensor& seed, const at::Tensor& offset,
                      bool mark_invalid);

// Argument checks shared by several kernels (defined in tilt_logits.cpp / value_heads.cpp).
void check_values(const at::Tensor& values, const at::Tensor& logits);
void check_candidate_ids(const at::Tensor& ids, int64_t B, int64_t V, const at::Tensor& ref);

}  // namespace cpu
}  // namespace mavis
