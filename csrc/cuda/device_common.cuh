// Device-side plumbing shared by the CUDA kernels of mavis: 16-byte loads of fp32/fp16/bf16, fp32
// math that matches the reference bit for bit (no FMA contraction), warp/block reductions, noise
// parameters and the per-row status bits. Only light headers (no ATen) so that the kernel
// translation units compile quickly; the ATen-facing host code is in host_common.cuh / ops_cuda.cu.
//
// Error policy (see benchmarks/CUDA_NOTES.md): every kernel that can see bad data writes a status
// code per row. Rows with an error get token id -1 and NaN log-probs (NaN candidate logits / lse
// for topk_candidates). With mark_invalid=False (the default) and outside CUDA-graph capture the
// host then copies the status words back once (one small D2H copy into pinned memory and a stream
// sync) and raises RuntimeError (as the CPU kernels do) naming the argument, with the reference's
// message. With mark_invalid=True, while capturing, or with MAVIS_CUDA_CHECKS=0 there is no copy
// and no sync: the caller sees the marked rows.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "mavis/ordered_key.h"
#include "mavis/philox.h"
#include "mavis/tilt.h"

namespace mavis_cuda {

// Largest k handled by the fused split-vocabulary top-k (one selected entry per thread of a
// 256-thread block). Larger k goes through the documented slow paths (ATen sort).
constexpr int kMaxFastK = 256;

// ----------------------------------------------------------------------------------- status bits
enum StatusBits : int {
  kLogitsNaN = 1,
  kLogitsPosInf = 2,
  kRowNoFinite = 4,
  kWeightsBad = 8,
  kValuesBad = 16,
  kCandOutOfRange = 32,
  kLogitsErrors = kLogitsNaN | kLogitsPosInf | kRowNoFinite,
};

// ------------------------------------------------------------------------------------- loads
template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

// 8 consecutive elements p[0..8) as float. `vec`: p is 16-byte aligned and all 8 are in range
// (one 16-byte load for half types, two for float). Otherwise only p[0..n_valid) are read.
template <typename T>
__device__ __forceinline__ void load8(const T* p, bool vec, int n_valid, float (&f)[8]) {
  if (vec && n_valid >= 8) {
    if constexpr (sizeof(T) == 4) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(p));
      const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
      f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
      f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
    } else {
      static_assert(sizeof(T) == 2, "load8: 2- or 4-byte types only");
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        T lo, hi;
        const uint16_t bl = static_cast<uint16_t>(w[i] & 0xFFFFu), bh = static_cast<uint16_t>(w[i] >> 16);
        memcpy(&lo, &bl, 2);
        memcpy(&hi, &bh, 2);
        f[2 * i] = to_f(lo);
        f[2 * i + 1] = to_f(hi);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = (i < n_valid) ? to_f(p[i]) : -INFINITY;
  }
}

// --------------------------------------------------------------------- reference-exact fp32 math
// The reference computes logit / temperature, then beta * combined, then the sum, each rounded
// separately; __f*_rn intrinsics are never contracted into FMA by nvcc.
__device__ __forceinline__ float scale_logit_rn(float x, float temperature) {
  return __fdiv_rn(x, temperature);
}
__device__ __forceinline__ float combine_step_rn(float acc, float w, float v) {
  return __fadd_rn(acc, __fmul_rn(w, v));
}
__device__ __forceinline__ float tilt_rn(float scaled, float beta, float combined) {
  return __fadd_rn(scaled, __fmul_rn(beta, combined));
}
// -0.0 -> +0.0 so that ordered keys treat the two zeros as the tie the float comparison sees.
__device__ __forceinline__ uint32_t score_key(float s) { return mavis::float_to_ordered(__fadd_rn(s, 0.0f)); }

__device__ __forceinline__ bool is_finite_f(float x) { return isfinite(x); }

// --------------------------------------------------------------------------- noise parameters
struct NoiseParams {
  const int64_t* seed;
  const int64_t* offset;
  bool seed_per_row;    // seed has B elements
  bool offset_per_row;  // offset has B elements
  bool row_in_counter;  // both have one element: the row index is part of the counter
};

// The 52 Philox bits of (row, col) (mavis/philox.h). `row` is the absolute row of the batch.
__device__ __forceinline__ uint64_t noise_bits_at(const NoiseParams& np, int64_t row, int64_t col) {
  const uint64_t s = static_cast<uint64_t>(np.seed[np.seed_per_row ? row : 0]);
  const uint64_t o = static_cast<uint64_t>(np.offset[np.offset_per_row ? row : 0]);
  const uint32_t row_ctr = np.row_in_counter ? static_cast<uint32_t>(row) : 0u;
  return mavis::philox_bits52(s, o, row_ctr, static_cast<uint32_t>(col));
}

// Gumbel noise of (row, col) in double.
__device__ __forceinline__ double gumbel_at(const NoiseParams& np, int64_t row, int64_t col) {
  return mavis::gumbel_from_uniform(mavis::uniform_from_bits52(noise_bits_at(np, row, col)));
}


// logsumexp of an accumulator, in double (the log-probabilities are rounded to fp32 once, at the end)
__device__ __forceinline__ double lse_value_d(mavis::LseAcc a) {
  return static_cast<double>(a.max) + log(static_cast<double>(a.sum));
}

// --------------------------------------------------------------------------- reductions
// Gumbel-max winner: larger score first, then the lower column. score = (double)t + gumbel, in
// double as on the CPU (mavis/philox.h): an fp32 score would round away the noise's low bits and
// tie columns the CPU tells apart.
struct ArgBest {
  double score;
  int64_t col;
  float t;  // tilted score at col
};

// True when a column with tilted score t cannot win against `best`: its noise is < kGumbelMax, and
// double rounding is monotone, so fl(t + g) <= fl(t + kGumbelMax) < best. Strict `<`: a column
// that could tie the winner (and win on the lower column) is never skipped.
__device__ __forceinline__ bool cannot_win(float t, double best) {
  return static_cast<double>(t) + mavis::kGumbelMax < best;
}

__device__ __forceinline__ bool arg_better(const ArgBest& a, const ArgBest& b) {
  return a.score > b.score || (a.score == b.score && a.col < b.col);
}

__device__ __forceinline__ ArgBest arg_merge(const ArgBest& a, const ArgBest& b) {
  if (b.col < 0) return a;
  if (a.col < 0) return b;
  return arg_better(b, a) ? b : a;
}

__device__ __forceinline__ ArgBest warp_arg_merge(ArgBest a) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgBest b;
    b.score = __shfl_xor_sync(0xffffffffu, a.score, o);
    b.col = __shfl_xor_sync(0xffffffffu, a.col, o);
    b.t = __shfl_xor_sync(0xffffffffu, a.t, o);
    a = arg_merge(a, b);
  }
  return a;
}

__device__ __forceinline__ mavis::LseAcc warp_lse_merge(mavis::LseAcc a) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    mavis::LseAcc b;
    b.max = __shfl_xor_sync(0xffffffffu, a.max, o);
    b.sum = __shfl_xor_sync(0xffffffffu, a.sum, o);
    a = mavis::lse_merge(a, b);
  }
  return a;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions for NT threads (NT a multiple of 32, at most 1024). `scratch` must hold
// NT/32 elements; every thread gets the result. Contains __syncthreads(): call from all threads.
template <int NT, typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) r += scratch[w];
  return r;
}

// Exclusive prefix sum of one int per thread over the block, in thread order; *total gets the sum.
// `scratch` holds NT/32 ints. Contains __syncthreads(): call from all threads.
template <int NT>
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  int before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) {
    before += (w < warp) ? scratch[w] : 0;
    all += scratch[w];
  }
  *total = all;
  return before + incl - v;
}

template <int NT>
__device__ __forceinline__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = -INFINITY;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) r = fmaxf(r, scratch[w]);
  return r;
}

template <int NT>
__device__ __forceinline__ mavis::LseAcc block_lse(mavis::LseAcc a, mavis::LseAcc* scratch) {
  a = warp_lse_merge(a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  mavis::LseAcc r = mavis::lse_init();
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) r = mavis::lse_merge(r, scratch[w]);
  return r;
}

template <int NT>
__device__ __forceinline__ ArgBest block_arg(ArgBest a, ArgBest* scratch) {
  a = warp_arg_merge(a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  ArgBest r{-INFINITY, -1, 0.0f};
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) r = arg_merge(r, scratch[w]);
  return r;
}

template <int NT>
__device__ __forceinline__ int block_or(int v, int* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int r = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) r |= scratch[w];
  return r;
}


}  // namespace mavis_cuda

namespace mavis_cuda {

// Run-time dtype code for the few scattered loads of the merge/tail kernels (a uniform branch is
// cheaper than multiplying template instantiations).
enum DtypeCode : int { kF32 = 0, kF16 = 1, kBF16 = 2 };


__device__ __forceinline__ float load_any(const void* p, int code, int64_t i) {
  if (code == kF32) return __ldg(static_cast<const float*>(p) + i);
  if (code == kF16) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

// load8 with the element type chosen at run time (a uniform branch): one kernel serves every
// dtype combination, which keeps the number of template instantiations (and the build time) small.
__device__ __forceinline__ void load8_rt(const void* base, int code, int64_t idx, bool vec, int n_valid,
                                         float (&f)[8]) {
  if (code == kF32) load8<float>(static_cast<const float*>(base) + idx, vec, n_valid, f);
  else if (code == kF16) load8<c10::Half>(static_cast<const c10::Half*>(base) + idx, vec, n_valid, f);
  else load8<c10::BFloat16>(static_cast<const c10::BFloat16*>(base) + idx, vec, n_valid, f);
}

}  // namespace mavis_cuda
