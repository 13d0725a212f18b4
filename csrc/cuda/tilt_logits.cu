// The tilt kernel (tilt_logits op and the slow paths): one pass, 8 columns per thread with 16-byte
// loads of the logits and of each value row, fp32 math in the reference's order, 2 x 16-byte stores.
#include "tilt_kernel.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;
constexpr int64_t kColsPerBlock = kNT * 8;

// Element types are run-time codes (uniform branches in load8_rt): one kernel for all dtypes.
__global__ void __launch_bounds__(kNT)
    tilt_kernel(const void* __restrict__ logits, int lcode, int64_t ld, const void* __restrict__ values, int vcode,
                int64_t vs_b, int64_t vs_m, const float* __restrict__ weights, bool w_per_row, int m, int64_t N,
                int64_t row0, float beta, float temperature, bool vec_l, bool vec_v, bool vec_o,
                float* __restrict__ out, int32_t* __restrict__ status) {
  const int tid = threadIdx.x;
  const int64_t row = row0 + blockIdx.y;
  const float* w = weights ? weights + (w_per_row ? row * m : 0) : nullptr;
  if (status != nullptr && blockIdx.x == 0 && tid < 32) {
    bool bad = false;
    for (int i = tid; i < m; i += 32) bad |= !isfinite(w[i]);
    bad = __any_sync(0xffffffffu, bad);
    if (tid == 0) status[row] = bad ? kWeightsBad : 0;
  }
  const int64_t col0 = blockIdx.x * kColsPerBlock + static_cast<int64_t>(tid) * 8;
  if (col0 >= N) return;
  const int nv = N - col0 >= 8 ? 8 : static_cast<int>(N - col0);
  float f[8], acc[8];
  load8_rt(logits, lcode, row * ld + col0, vec_l, nv, f);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
  if (values != nullptr) {
    for (int i = 0; i < m; ++i) {
      float v[8];
      load8_rt(values, vcode, row * vs_b + i * vs_m + col0, vec_v, nv, v);
      const float wi = w[i];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = combine_step_rn(acc[e], wi, v[e]);
    }
  }
  float o[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float s = scale_logit_rn(f[e], temperature);
    o[e] = values != nullptr ? tilt_rn(s, beta, acc[e]) : s;
  }
  float* orow = out + row * N + col0;
  if (vec_o && nv == 8) {
    reinterpret_cast<float4*>(orow)[0] = make_float4(o[0], o[1], o[2], o[3]);
    reinterpret_cast<float4*>(orow)[1] = make_float4(o[4], o[5], o[6], o[7]);
  } else {
    for (int e = 0; e < nv; ++e) orow[e] = o[e];
  }
}

}  // namespace

void launch_tilt_kernel(const TiltArgs& a, cudaStream_t stream) {
  const int64_t col_blocks = (a.N + kColsPerBlock - 1) / kColsPerBlock;
  TORCH_CHECK(col_blocks < (int64_t{1} << 31), "tilt: row too long");
  // grid y holds at most 65535 rows: larger batches take several launches
  for (int64_t r0 = 0; r0 < a.B; r0 += 65535) {
    const int64_t rows = a.B - r0 < 65535 ? a.B - r0 : 65535;
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(rows));
    tilt_kernel<<<grid, kNT, 0, stream>>>(a.logits, a.logits_code, a.ld_logits, a.values, a.values_code, a.vs_b,
                                          a.vs_m, a.weights, a.w_per_row, a.m, a.N, r0, a.beta, a.temperature,
                                          a.vec_logits, a.vec_values, a.vec_out, a.out, a.status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace mavis_cuda
