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
#include "value_heads.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;
constexpr int kWarps = kNT / 32;

// Dot product of two length-d rows; result in every lane. h / w: element offsets of the rows' first
// elements, hs / ws: element strides along the rows, element types as run-time codes.
// `vec` (hs == ws == 1, both rows 16-byte aligned): 8-element granules with 16-byte loads, 4 in
// flight per lane; a granule only partly inside the row (fp32 rows are 16-byte aligned whenever
// d % 4 == 0, so d may end half-way through a granule) reads only its elements inside the row.
__device__ __forceinline__ float warp_dot(const void* __restrict__ hb, int hcode, int64_t h, int64_t hs,
                                          const void* __restrict__ wb, int wcode, int64_t w, int64_t ws, int64_t d,
                                          bool vec) {
  const int lane = threadIdx.x & 31;
  float acc = 0.0f;
  if (vec) {
    constexpr int64_t kStep = 32 * 8;
    int64_t c = lane * 8;
    for (; c + 3 * kStep + 8 <= d; c += 4 * kStep) {  // 4 whole granules
      float hf[4][8], wf[4][8];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        load8_rt(hb, hcode, h + c + u * kStep, true, 8, hf[u]);
        load8_rt(wb, wcode, w + c + u * kStep, true, 8, wf[u]);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int e = 0; e < 8; ++e) acc = fmaf(hf[u][e], wf[u][e], acc);
    }
    for (; c < d; c += kStep) {
      const int nv = d - c >= 8 ? 8 : static_cast<int>(d - c);
      float hf[8], wf[8];
      load8_rt(hb, hcode, h + c, true, nv, hf);  // nv < 8: scalar loads of the nv elements only
      load8_rt(wb, wcode, w + c, true, nv, wf);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (e < nv) acc = fmaf(hf[e], wf[e], acc);
    }
  } else {
    for (int64_t c = lane; c < d; c += 32)
      acc = fmaf(load_any(hb, hcode, h + c * hs), load_any(wb, wcode, w + c * ws), acc);
  }
  return warp_sum(acc);
}


__device__ __forceinline__ void check_weights_block0(const HeadArgs& a) {
  if (a.status == nullptr || a.weights == nullptr || blockIdx.x != 0) return;
  const int64_t n = a.w_per_row ? a.B * a.m : a.m;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < n; i += kNT) bad |= !isfinite(a.weights[i]);
  if (bad) atomicOr(a.status, kWeightsBad);
}

template <bool QHEAD>
__global__ void __launch_bounds__(kNT) head_kernel(const HeadArgs a) {
  check_weights_block0(a);
  const int lane = threadIdx.x & 31;
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (pos >= a.B * a.P) return;
  const int64_t b = pos / a.P, j = pos - b * a.P;
  int64_t h;            // element offset of the hidden row
  int64_t row_of_head;  // row index inside each head's [V, d] (Q-head) or 0 (prefix)
  if constexpr (QHEAD) {
    h = b * a.h_sb;
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
    h = b * a.h_sb + j * a.h_sn;
    row_of_head = 0;
  }
  const float* w = a.weights != nullptr ? a.weights + (a.w_per_row ? b * a.m : 0) : nullptr;
  float comb = 0.0f;
  for (int i = 0; i < a.m; ++i) {
    const int64_t wr = static_cast<int64_t>(i) * a.w_sm + row_of_head * a.w_sv;
    float v = warp_dot(a.hidden, a.hidden_code, h, a.h_sd, a.weight, a.weight_code, wr, a.w_sd, a.d, a.vec);
    if (a.bias != nullptr)
      v = __fadd_rn(v, load_any(a.bias, a.bias_code, static_cast<int64_t>(i) * a.b_sm + row_of_head * a.b_sv));
    if (w != nullptr) comb = combine_step_rn(comb, w[i], v);
    else if (lane == 0) a.out[(b * a.m + i) * a.P + j] = v;
  }
  if (w != nullptr && lane == 0) a.out[pos] = comb;
}

}  // namespace

void launch_heads(const HeadArgs& a, bool qhead, cudaStream_t stream) {
  const int64_t n_pos = a.B * a.P;
  const int64_t blocks = n_pos > 0 ? (n_pos + kWarps - 1) / kWarps : 1;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "value_heads: too many positions");
  if (qhead) head_kernel<true><<<static_cast<unsigned>(blocks), kNT, 0, stream>>>(a);
  else head_kernel<false><<<static_cast<unsigned>(blocks), kNT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mavis_cuda
