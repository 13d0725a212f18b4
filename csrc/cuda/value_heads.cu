// value_heads on CUDA.
//
// Both modes are batches of small dot products of length d, so both use one warp per output
// position: the warp streams the hidden row and the head row with 16-byte loads (8 elements per
// lane per step, 4 steps in flight), accumulates in fp32 and reduces with shuffles. The m heads of
// a position are done by the same warp, so the hidden row is read from L1 after the first head,
// and the weights fold in registers: combined = sum_i w_i * (dot_i + bias_i), objectives in order,
// each product and sum rounded separately as reference.combine_values does.
//   prefix mode: position (b, n), hidden row [d], head rows W[i] ([m, d], L2/L1-resident).
//   Q-head mode: position (b, j), hidden row b, head rows W[i, cand[b, j]]: only K rows per head.
#include "host_checks.cuh"
#include "value_heads.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;
constexpr int kWarps = kNT / 32;

// Dot product of two length-d rows; result in every lane. `vec`: both rows 16-byte aligned and d a
// multiple of 8.
template <typename TH, typename TW>
__device__ __forceinline__ float warp_dot(const TH* __restrict__ h, const TW* __restrict__ w, int64_t d, bool vec) {
  const int lane = threadIdx.x & 31;
  float acc = 0.0f;
  if (vec) {
    constexpr int64_t kStep = 32 * 8;
    int64_t c = lane * 8;
    for (; c + 3 * kStep < d; c += 4 * kStep) {
      float hf[4][8], wf[4][8];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        load8<TH>(h + c + u * kStep, true, 8, hf[u]);
        load8<TW>(w + c + u * kStep, true, 8, wf[u]);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc = fmaf(hf[u][e], wf[u][e], acc);
    }
    for (; c < d; c += kStep) {
      float hf[8], wf[8];
      load8<TH>(h + c, true, 8, hf);
      load8<TW>(w + c, true, 8, wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc = fmaf(hf[e], wf[e], acc);
    }
  } else {
    for (int64_t c = lane; c < d; c += 32) acc = fmaf(to_f(h[c]), to_f(w[c]), acc);
  }
  return warp_sum(acc);
}

struct HeadArgs {
  const void* hidden;
  const void* weight;
  const void* bias;  // nullptr: no bias
  int bias_code;
  const int64_t* cand;  // Q-head mode
  const float* weights;  // nullptr: per-head output
  bool w_per_row;
  int64_t B, P;  // rows, positions per row (N or K)
  int m;
  int64_t V, d;
  bool vec;
  float* out;
  int32_t* status;
};

__device__ __forceinline__ void check_weights_block0(const HeadArgs& a) {
  if (a.status == nullptr || a.weights == nullptr || blockIdx.x != 0) return;
  const int64_t n = a.w_per_row ? a.B * a.m : a.m;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < n; i += kNT) bad |= !isfinite(a.weights[i]);
  if (bad) atomicOr(a.status, kWeightsBad);
}

template <typename TH, typename TW, bool QHEAD>
__global__ void __launch_bounds__(kNT) head_kernel(const HeadArgs a) {
  check_weights_block0(a);
  const int lane = threadIdx.x & 31;
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (pos >= a.B * a.P) return;
  const int64_t b = pos / a.P, j = pos - b * a.P;
  const TH* h;
  int64_t row_of_head;  // row index inside each head's [V, d] (Q-head) or 0 (prefix)
  if constexpr (QHEAD) {
    h = static_cast<const TH*>(a.hidden) + b * a.d;
    row_of_head = a.cand[pos];
    if (row_of_head < 0 || row_of_head >= a.V) {
      if (lane == 0) {
        if (a.status != nullptr) atomicOr(a.status, kCandOutOfRange);
        if (a.weights != nullptr) a.out[pos] = NAN;
        else
          for (int i = 0; i < a.m; ++i) a.out[(b * a.m + i) * a.P + j] = NAN;
      }
      return;
    }
  } else {
    h = static_cast<const TH*>(a.hidden) + pos * a.d;
    row_of_head = 0;
  }
  const float* w = a.weights != nullptr ? a.weights + (a.w_per_row ? b * a.m : 0) : nullptr;
  float comb = 0.0f;
  for (int i = 0; i < a.m; ++i) {
    const TW* wr = static_cast<const TW*>(a.weight) + (static_cast<int64_t>(i) * a.V + row_of_head) * a.d;
    float v = warp_dot<TH, TW>(h, wr, a.d, a.vec);
    if (a.bias != nullptr) v = __fadd_rn(v, load_any(a.bias, a.bias_code, static_cast<int64_t>(i) * a.V + row_of_head));
    if (w != nullptr) comb = combine_step_rn(comb, w[i], v);
    else if (lane == 0) a.out[(b * a.m + i) * a.P + j] = v;
  }
  if (w != nullptr && lane == 0) a.out[pos] = comb;
}

template <bool QHEAD>
void launch_heads(const HeadArgs& a, at::ScalarType ht, at::ScalarType wt, cudaStream_t stream) {
  const int64_t n_pos = a.B * a.P;
  const int64_t blocks = std::max<int64_t>(1, (n_pos + kWarps - 1) / kWarps);
  TORCH_CHECK(blocks < (int64_t{1} << 31), "value_heads: too many positions");
  dispatch_float(ht, "hidden", [&](auto htag) {
    using TH = decltype(htag);
    dispatch_float(wt, "head_weight", [&](auto wtag) {
      using TW = decltype(wtag);
      head_kernel<TH, TW, QHEAD><<<static_cast<unsigned>(blocks), kNT, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

HeadArgs make_args(const at::Tensor& hidden, const at::Tensor& W, const at::Tensor& bias, const at::Tensor& weights,
                   int64_t B, int64_t P, int64_t V, at::Tensor& out, int32_t* status) {
  HeadArgs a{};
  a.hidden = hidden.data_ptr();
  a.weight = W.data_ptr();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.bias_code = bias.defined() ? dtype_code(bias.scalar_type()) : kF32;
  a.cand = nullptr;
  a.weights = weights.defined() ? weights.data_ptr<float>() : nullptr;
  a.w_per_row = weights.defined() && weights.dim() == 2;
  a.B = B;
  a.P = P;
  a.m = static_cast<int>(W.size(0));
  a.V = V;
  a.d = hidden.size(-1);
  a.vec = rows_vec_aligned(hidden, a.d) && rows_vec_aligned(W, a.d);
  a.out = out.data_ptr<float>();
  a.status = status;
  return a;
}

}  // namespace

void launch_qhead(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& head_bias,
                  const at::Tensor& cand, const at::Tensor& weights, at::Tensor& out, int32_t* status,
                  cudaStream_t stream) {
  HeadArgs a = make_args(hidden, head_weight, head_bias, weights, hidden.size(0), cand.size(1), head_weight.size(1),
                         out, status);
  a.cand = cand.data_ptr<int64_t>();
  launch_heads<true>(a, hidden.scalar_type(), head_weight.scalar_type(), stream);
}

at::Tensor value_heads_cuda(const at::Tensor& hidden_in, const at::Tensor& head_weight_in,
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
  const at::Tensor hidden = hidden_in.contiguous(), W = head_weight_in.contiguous();
  const at::Tensor bias = head_bias_in.has_value() ? head_bias_in->contiguous() : at::Tensor();
  const at::Tensor weights = weights_in.has_value() ? weights_in->contiguous() : at::Tensor();
  const int64_t P = q_mode ? candidate_ids_in->size(1) : hidden.size(1);
  auto opts = hidden.options().dtype(at::kFloat);
  at::Tensor out = weights.defined() ? at::empty({B, P}, opts) : at::empty({B, m, P}, opts);
  at::Tensor status = at::zeros({1}, opts.dtype(at::kInt));
  if (q_mode) {
    const at::Tensor cand = candidate_ids_in->contiguous();
    launch_qhead(hidden, W, bias, cand, weights, out, status.data_ptr<int32_t>(), stream);
  } else {
    HeadArgs a = make_args(hidden, W, bias, weights, B, P, 1, out, status.data_ptr<int32_t>());
    launch_heads<false>(a, hidden.scalar_type(), W.scalar_type(), stream);
  }
  check_status(status, stream);
  return out;
}

}  // namespace mavis_cuda

TORCH_LIBRARY_IMPL(mavis, CUDA, m) { m.impl("value_heads", &mavis_cuda::value_heads_cuda); }
