// The one kernel of the slow paths (host side, ATen ops: host_slow_paths.cuh): Gumbel-max over a
// boolean keep mask with the shared counter noise, one block per row. Used only where the fused
// kernels do not apply (k > 256, or a nucleus over the whole vocabulary), so clarity wins here.
#include "masked_sample.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;

struct MaskedSmem {
  mavis::LseAcc lse_s[kNT / 32];
  ArgBest arg_s[kNT / 32];
};

// One block per row: Gumbel-max over the kept columns, logsumexp of t over them and of base over
// its finite entries (or logp_base = base[tok] - lse_override[row] when given).
__global__ void __launch_bounds__(kNT)
    masked_sample_kernel(const float* __restrict__ t, const float* __restrict__ base, const bool* __restrict__ keep,
                         int64_t N, int64_t noise_row0, NoiseParams noise, const int64_t* __restrict__ cand_map,
                         const float* __restrict__ lse_override, const int32_t* __restrict__ status_in,
                         int64_t* out_ids, float* out_lt, float* out_lb, int32_t* status_out) {
  __shared__ MaskedSmem sm;
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;
  mavis::LseAcc lt = mavis::lse_init(), lb = mavis::lse_init();
  ArgBest best{-INFINITY, -1, 0.0f};
  for (int64_t col = tid; col < N; col += kNT) {
    const int64_t i = row * N + col;
    const float b = base[i];
    if (isfinite(b)) mavis::lse_push(lb, b);
    if (keep[i]) {
      const float tv = t[i];
      mavis::lse_push(lt, tv);
      const double score = static_cast<double>(tv) + gumbel_at(noise, noise_row0 + row, col);
      best = arg_merge(best, ArgBest{score, col, tv});
    }
  }
  lt = block_lse<kNT>(lt, sm.lse_s);
  lb = block_lse<kNT>(lb, sm.lse_s);
  best = block_arg<kNT>(best, sm.arg_s);
  if (tid != 0) return;
  const int st = status_in[row];
  if (st != 0 || best.col < 0) {
    out_ids[row] = -1;
    out_lt[row] = NAN;
    out_lb[row] = NAN;
    status_out[row] = st != 0 ? st : kRowNoFinite;
    return;
  }
  const float b_tok = base[row * N + best.col];
  out_ids[row] = cand_map != nullptr ? cand_map[row * N + best.col] : best.col;
  out_lt[row] = static_cast<float>(static_cast<double>(best.t) - lse_value_d(lt));
  out_lb[row] = lse_override != nullptr ? b_tok - lse_override[row] : (b_tok - lb.max) - logf(lb.sum);
  status_out[row] = 0;
}

}  // namespace

void launch_masked_sample(const MaskedSampleArgs& a, cudaStream_t stream) {
  masked_sample_kernel<<<static_cast<unsigned>(a.rows), kNT, 0, stream>>>(
      a.t, a.base, a.keep, a.N, a.noise_row0, a.noise, a.cand_map, a.lse_override, a.status_in, a.out_ids, a.out_lt,
      a.out_lb, a.status_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mavis_cuda
