// tilt_logits on CUDA: one pass, 8 columns per thread with 16-byte loads of the logits and of
// each value row, fp32 math in the reference's order, 2 x 16-byte stores.
#include "host_checks.cuh"
#include "tilt_kernel.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;
constexpr int64_t kColsPerBlock = kNT * 8;

template <typename TL, typename TV>
__global__ void __launch_bounds__(kNT)
    tilt_kernel(const TL* __restrict__ logits, const TV* __restrict__ values, const float* __restrict__ weights,
                bool w_per_row, int m, int64_t N, float beta, float temperature, bool vec_l, bool vec_v,
                bool vec_o, float* __restrict__ out, int32_t* __restrict__ status) {
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.y;
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
  load8<TL>(logits + row * N + col0, vec_l, nv, f);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
  if (values != nullptr) {
    for (int i = 0; i < m; ++i) {
      float v[8];
      load8<TV>(values + (row * m + i) * N + col0, vec_v, nv, v);
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

at::Tensor launch_tilt(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, float beta,
                       float temperature, int32_t* status, cudaStream_t stream) {
  const int64_t B = logits.size(0), N = logits.size(1);
  TORCH_CHECK(B <= 65535, "logits: the CUDA kernels support at most 65535 rows, got ", B);
  at::Tensor out = at::empty({B, N}, logits.options().dtype(at::kFloat));
  const bool has_v = values.defined();
  const int m = has_v ? static_cast<int>(values.size(1)) : 0;
  const dim3 grid(static_cast<unsigned>((N + kColsPerBlock - 1) / kColsPerBlock), static_cast<unsigned>(B));
  const bool vec_l = rows_vec_aligned(logits, N);
  const bool vec_v = has_v && rows_vec_aligned(values, N);
  const bool vec_o = rows_vec_aligned(out, N);
  const float* w = weights.defined() ? weights.data_ptr<float>() : nullptr;
  const bool w_per_row = weights.defined() && weights.dim() == 2;
  dispatch_float(logits.scalar_type(), "logits", [&](auto ltag) {
    using TL = decltype(ltag);
    dispatch_float(has_v ? values.scalar_type() : at::kFloat, "values", [&](auto vtag) {
      using TV = decltype(vtag);
      tilt_kernel<TL, TV><<<grid, kNT, 0, stream>>>(
          static_cast<const TL*>(logits.data_ptr()), has_v ? static_cast<const TV*>(values.data_ptr()) : nullptr, w,
          w_per_row, m, N, beta, temperature, vec_l, vec_v, vec_o, out.data_ptr<float>(), status);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor tilt_logits_cuda(const at::Tensor& logits_in, const at::Tensor& values_in, const at::Tensor& weights_in,
                            double beta, double temperature) {
  mavis::check_logits(logits_in);
  check_cuda(logits_in, "logits");
  mavis::check_temperature(temperature);
  check_values(values_in, logits_in);
  const int64_t B = logits_in.size(0);
  mavis::check_weights(weights_in, B, values_in.size(1), logits_in);
  check_beta(beta);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor logits = logits_in.contiguous(), values = values_in.contiguous(), w = weights_in.contiguous();
  at::Tensor status = at::empty({B}, logits.options().dtype(at::kInt));
  at::Tensor out = launch_tilt(logits, values, w, static_cast<float>(beta), static_cast<float>(temperature),
                               status.data_ptr<int32_t>(), stream);
  check_status(status, stream);
  return out;
}

}  // namespace mavis_cuda

TORCH_LIBRARY_IMPL(mavis, CUDA, m) { m.impl("tilt_logits", &mavis_cuda::tilt_logits_cuda); }
