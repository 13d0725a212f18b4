// value_heads on the CPU. Prefix mode: B*N small GEMVs against the [m, d] head matrix. Q-head mode:
// per row, gather only the K candidate rows of each [V, d] head (never the whole vocabulary).
// Dot products accumulate in fp32 over 8 lanes; with `weights` the objectives are combined in
// order, as reference.combine_values does.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"

namespace mavis {
namespace cpu {

namespace {

// Makes the last dimension contiguous (the dot products stream along it); other strides are kept.
at::Tensor last_dim_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

}  // namespace

// Checks candidate_ids [B, K] int64 against [0, V): an out-of-range id would read out of bounds.
void check_candidate_ids(const at::Tensor& ids, int64_t B, int64_t V, const at::Tensor& ref) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, "candidate_ids: expected int64, got ", ids.scalar_type());
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == B && ids.size(1) > 0,
              "candidate_ids: expected shape [B=", B, ", K] with K > 0, got ", ids.sizes());
  check_same_device(ids, ref, "candidate_ids");
  const at::Tensor c = ids.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.numel(); ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < V, "candidate_ids: id ", p[i], " out of range [0, ", V, ")");
}

at::Tensor value_heads(const at::Tensor& hidden_in, const at::Tensor& head_weight_in, const OptTensor& head_bias,
                       const OptTensor& candidate_ids, const OptTensor& weights) {
  const bool q_mode = candidate_ids.has_value();
  check_float(hidden_in, "hidden");
  check_float(head_weight_in, "head_weight");
  check_dim(hidden_in, q_mode ? 2 : 3, "hidden");
  check_dim(head_weight_in, q_mode ? 3 : 2, "head_weight");
  check_same_device(head_weight_in, hidden_in, "head_weight");
  const int64_t B = hidden_in.size(0), d = hidden_in.size(-1), m = head_weight_in.size(0);
  TORCH_CHECK(B > 0, "hidden: empty batch (B == 0)");
  TORCH_CHECK(m > 0, "head_weight: no objectives (m == 0)");
  TORCH_CHECK(head_weight_in.size(-1) == d, "head_weight: last dimension ", head_weight_in.size(-1),
              " != hidden size d=", d);
  if (head_bias.has_value()) {
    check_float(*head_bias, "head_bias");
    check_same_device(*head_bias, hidden_in, "head_bias");
    const auto want = head_weight_in.sizes().slice(0, head_weight_in.dim() - 1);
    TORCH_CHECK(head_bias->sizes() == want, "head_bias: expected shape ", want, ", got ", head_bias->sizes());
  }
  const int64_t N = q_mode ? candidate_ids->size(1) : hidden_in.size(1);
  if (q_mode) check_candidate_ids(*candidate_ids, B, head_weight_in.size(1), hidden_in);
  at::Tensor w;
  if (weights.has_value()) {
    check_weights(*weights, B, m, hidden_in);
    w = checked_weights(*weights);
  }

  const at::Tensor hidden = last_dim_contiguous(hidden_in);
  const at::Tensor W = last_dim_contiguous(head_weight_in);
  const void* W_p = W.data_ptr();
  const at::ScalarType W_st = W.scalar_type();
  const bool has_bias = head_bias.has_value();
  const at::Tensor bias = has_bias ? *head_bias : at::Tensor();
  const void* bias_p = has_bias ? bias.data_ptr() : nullptr;
  const at::Tensor ids = q_mode ? candidate_ids->contiguous() : at::Tensor();
  const int64_t* ids_p = q_mode ? ids.data_ptr<int64_t>() : nullptr;

  at::Tensor out = weights.has_value() ? at::empty({B, N}, hidden.options().dtype(at::kFloat))
                                       : at::empty({B, m, N}, hidden.options().dtype(at::kFloat));
  float* out_p = out.data_ptr<float>();

  // value of objective i at (row b, position n): hidden row h (fp32) against the head row.
  auto head_value = [&](int64_t b, int64_t n, int64_t i, const float* h) -> float {
    float v;
    if (q_mode) {
      const int64_t col = ids_p[b * N + n];
      v = dot_any(W_p, W_st, i * W.stride(0) + col * W.stride(1), h, d);
      if (has_bias) v = v + load_one(bias_p, bias.scalar_type(), i * bias.stride(0) + col * bias.stride(1));
    } else {
      v = dot_any(W_p, W_st, i * W.stride(0), h, d);
      if (has_bias) v = v + load_one(bias_p, bias.scalar_type(), i * bias.stride(0));
    }
    return v;
  };

  // Work items: (b, n) pairs, each a handful of length-d dot products.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, m * d));
  at::parallel_for(0, B * N, grain, [&](int64_t i0, int64_t i1) {
    std::vector<float> h(static_cast<size_t>(d));
    int64_t loaded_b = -1;
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t b = it / N, n = it % N;
      if (q_mode) {
        if (b != loaded_b) {
          load_block(hidden.data_ptr(), hidden.scalar_type(), b * hidden.stride(0), 1, d, h.data());
          loaded_b = b;
        }
      } else {
        load_block(hidden.data_ptr(), hidden.scalar_type(), b * hidden.stride(0) + n * hidden.stride(1), 1, d,
                   h.data());
      }
      if (w.defined()) {
        const float* wr = weight_row(w, b);
        float comb = wr[0] * head_value(b, n, 0, h.data());
        for (int64_t i = 1; i < m; ++i) comb = comb + wr[i] * head_value(b, n, i, h.data());
        out_p[b * N + n] = comb;
      } else {
        for (int64_t i = 0; i < m; ++i) out_p[(b * m + i) * N + n] = head_value(b, n, i, h.data());
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace mavis
