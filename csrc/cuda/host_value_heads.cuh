// Host side of value_heads (and the candidate gather-GEMV step of guided_sample).
#pragma once

#include "host_common.cuh"
#include "value_heads.cuh"

namespace mavis_cuda {

// hidden: [B, d] (Q-head) or [B, P, d] (prefix); W: [m, V, d] (Q-head) or [m, d] (prefix); bias
// [m, V] / [m] or undefined; all three read through their strides (no copy). weights contiguous
// or undefined; out: preallocated contiguous fp32.
inline HeadArgs make_head_args(const at::Tensor& hidden, const at::Tensor& W, const at::Tensor& bias,
                               const at::Tensor& weights, int64_t B, int64_t P, int64_t V, bool qhead, at::Tensor& out,
                               int32_t* status) {
  HeadArgs a{};
  a.hidden = hidden.data_ptr();
  a.hidden_code = dtype_code(hidden.scalar_type());
  a.h_sb = hidden.stride(0);
  a.h_sn = qhead ? 0 : hidden.stride(1);
  a.h_sd = hidden.stride(-1);
  a.weight = W.data_ptr();
  a.weight_code = dtype_code(W.scalar_type());
  a.w_sm = W.stride(0);
  a.w_sv = qhead ? W.stride(1) : 0;
  a.w_sd = W.stride(-1);
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.bias_code = bias.defined() ? dtype_code(bias.scalar_type()) : kF32;
  a.b_sm = bias.defined() ? bias.stride(0) : 0;
  a.b_sv = bias.defined() && qhead ? bias.stride(1) : 0;
  a.cand = nullptr;
  a.weights = weights.defined() ? weights.data_ptr<float>() : nullptr;
  a.w_per_row = weights.defined() && weights.dim() == 2;
  a.B = B;
  a.P = P;
  a.m = static_cast<int>(W.size(0));
  a.V = V;
  a.d = hidden.size(-1);
  a.vec = rows_vec_aligned(hidden) && rows_vec_aligned(W);
  a.out = out.data_ptr<float>();
  a.status = status;
  return a;
}

// Q-head gather-GEMV: hidden [B, d], head_weight [m, V, d], head_bias [m, V] or undefined (any
// strides), cand [B, K] int64 contiguous, weights or undefined -> out ([B, K] or [B, m, K],
// preallocated fp32).
inline void launch_qhead(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& head_bias,
                         const at::Tensor& cand, const at::Tensor& weights, at::Tensor& out, int32_t* status,
                         cudaStream_t stream) {
  HeadArgs a = make_head_args(hidden, head_weight, head_bias, weights, hidden.size(0), cand.size(1),
                              head_weight.size(1), /*qhead=*/true, out, status);
  a.cand = cand.data_ptr<int64_t>();
  launch_heads(a, /*qhead=*/true, stream);
}

inline at::Tensor value_heads_cuda(const at::Tensor& hidden_in, const at::Tensor& head_weight_in,
                                   const c10::optional<at::Tensor>& head_bias_in,
                                   const c10::optional<at::Tensor>& candidate_ids_in,
                                   const c10::optional<at::Tensor>& weights_in) {
  const bool q_mode = candidate_ids_in.has_value();
  mavis::check_float(hidden_in, "hidden");
  mavis::check_float(head_weight_in, "head_weight");
  mavis::check_dim(hidden_in, q_mode ? 2 : 3, "hidden");
  mavis::check_dim(head_weight_in, q_mode ? 3 : 2, "head_weight");
  check_cuda(hidden_in, "hidden");
  mavis::check_same_device(head_weight_in, hidden_in, "head_weight");
  const int64_t B = hidden_in.size(0), d = hidden_in.size(-1), m = head_weight_in.size(0);
  TORCH_CHECK(B > 0, "hidden: empty batch (B == 0)");
  TORCH_CHECK(m > 0, "head_weight: no objectives (m == 0)");
  TORCH_CHECK(head_weight_in.size(-1) == d, "head_weight: last dimension ", head_weight_in.size(-1),
              " != hidden size d=", d);
  if (head_bias_in.has_value()) {
    mavis::check_float(*head_bias_in, "head_bias");
    mavis::check_same_device(*head_bias_in, hidden_in, "head_bias");
    const auto want = head_weight_in.sizes().slice(0, head_weight_in.dim() - 1);
    TORCH_CHECK(head_bias_in->sizes() == want, "head_bias: expected shape ", want, ", got ", head_bias_in->sizes());
  }
  if (q_mode) {
    const at::Tensor& c = *candidate_ids_in;
    TORCH_CHECK(c.scalar_type() == at::kLong, "candidate_ids: expected int64, got ", c.scalar_type());
    TORCH_CHECK(c.dim() == 2 && c.size(0) == B && c.size(1) > 0, "candidate_ids: expected shape [B=", B,
                ", K] with K > 0, got ", c.sizes());
    mavis::check_same_device(c, hidden_in, "candidate_ids");
  }
  if (weights_in.has_value()) mavis::check_weights(*weights_in, B, m, hidden_in);

  const c10::cuda::CUDAGuard guard(hidden_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // hidden, head_weight and head_bias are read through their strides, never copied: a [m, V, d]
  // head in a non-canonical layout would otherwise be copied whole (gigabytes), even under capture.
  const at::Tensor& hidden = hidden_in;
  const at::Tensor& W = head_weight_in;
  const at::Tensor bias = head_bias_in.has_value() ? *head_bias_in : at::Tensor();
  const at::Tensor weights = weights_in.has_value() ? weights_in->contiguous() : at::Tensor();
  const int64_t P = q_mode ? candidate_ids_in->size(1) : hidden.size(1);
  auto opts = hidden.options().dtype(at::kFloat);
  at::Tensor out = weights.defined() ? at::empty({B, P}, opts) : at::empty({B, m, P}, opts);
  at::Tensor status = at::zeros({1}, opts.dtype(at::kInt));
  if (q_mode) {
    const at::Tensor cand = candidate_ids_in->contiguous();
    launch_qhead(hidden, W, bias, cand, weights, out, status.data_ptr<int32_t>(), stream);
  } else if (P > 0) {
    HeadArgs a = make_head_args(hidden, W, bias, weights, B, P, 1, /*qhead=*/false, out, status.data_ptr<int32_t>());
    launch_heads(a, /*qhead=*/false, stream);
  }
  check_status(status, stream, /*mark_invalid=*/false);
  return out;
}

}  // namespace mavis_cuda
