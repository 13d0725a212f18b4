// Vectorisable building blocks of the CPU kernels: dtype-generic block loads into fp32, a
// branch-free exp, and block max / sum-of-exp reductions.
//
// Why plain loops over 8 fixed lanes: g++/clang -O3 vectorise them for whatever ISA the extension
// is compiled for (SSE2 baseline on x86-64, NEON on arm64) without assuming AVX2, and the lane
// accumulators avoid the floating-point reassociation that would otherwise forbid vectorising
// reductions. On x86-64 Linux with GCC the hot reductions are additionally cloned for AVX2 and
// picked at load time (target_clones), which is safe on CPUs without AVX2.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>


// On x86-64 Linux with GCC, hot loops (cpu_math.cpp, philox_block.cpp) get an AVX2 clone next to
// the baseline and the loader picks (ifunc): safe on CPUs without AVX2. "avx2" does not enable FMA,
// so no multiply-add contraction can change results between the clones.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MAVIS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MAVIS_CLONES
#endif

namespace mavis {
namespace cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();
// Rows are consumed in blocks of this many columns: a block of fp32 scratch per stream stays in L1
// while the vocabulary is streamed from memory once.
constexpr int64_t kBlock = 2048;

template <typename T>
inline void load_block_t(const T* src, int64_t stride, int64_t n, float* dst) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i * stride]);
  }
}

// Exact fp16 -> fp32 of a contiguous block (vectorised; c10::Half's conversion is scalar without F16C).
void half_to_float_block(const uint16_t* h, int64_t n, float* out);

// dst[0:n] = float(base[start + i * stride]) for a float32 / float16 / bfloat16 tensor's data.
inline void load_block(const void* base, at::ScalarType st, int64_t start, int64_t stride, int64_t n, float* dst) {
  switch (st) {
    case at::kFloat:
      load_block_t(static_cast<const float*>(base) + start, stride, n, dst);
      break;
    case at::kHalf:
      if (stride == 1) {
        half_to_float_block(reinterpret_cast<const uint16_t*>(static_cast<const c10::Half*>(base) + start), n, dst);
      } else {
        load_block_t(static_cast<const c10::Half*>(base) + start, stride, n, dst);
      }
      break;
    case at::kBFloat16:
      load_block_t(static_cast<const c10::BFloat16*>(base) + start, stride, n, dst);
      break;
    default:
      TORCH_CHECK(false, "mavis: unsupported dtype ", st);
  }
}

inline float load_one(const void* base, at::ScalarType st, int64_t idx) {
  switch (st) {
    case at::kFloat:
      return static_cast<const float*>(base)[idx];
    case at::kHalf:
      return static_cast<float>(static_cast<const c10::Half*>(base)[idx]);
    case at::kBFloat16:
      return static_cast<float>(static_cast<const c10::BFloat16*>(base)[idx]);
    default:
      TORCH_CHECK(false, "mavis: unsupported dtype ", st);
  }
}

// exp(x) to ~2 ulp for x in [-87, 88], 0 below -87 (so exp(-inf) == 0). Cephes polynomial, rounding
// by the 1.5 * 2^23 trick so that no SSE4.1 round instruction is needed. Used for logsumexp and
// nucleus masses only: the sampled token never depends on it except through top_p boundaries.
// Written on GCC/clang vector types (8 lanes): the compiler lowers them to whatever the target has
// (2 x SSE2, 1 x AVX2, 2 x NEON); a scalar loop with the clamp would not be if-converted.
#if defined(__GNUC__)
#define MAVIS_VEC_EXT 1
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f v8_broadcast(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// mask ? a : b per lane (mask lanes all-ones or zero, as vector compares produce). Bitwise, because
// `?:` on vector types is not accepted by every compiler version.
inline v8f v8_select(v8i mask, v8f a, v8f b) { return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask)); }

inline v8f v8_load(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline v8f fast_exp_v8(v8f x) {
  const v8f lo = v8_broadcast(-87.0f);
  const v8i small = x < lo;
  const v8f xc = v8_select(small, lo, x);
  const v8f t = xc * 1.44269504088896341f + 12582912.0f;
  const v8f n = t - 12582912.0f;
  const v8i ni = (v8i)t - 0x4B400000;
  v8f r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v8f y = v8_broadcast(1.9875691500E-4f);
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * r * r + r + 1.0f;
  const v8i bits = (ni + 127) << 23;
  const v8f res = y * (v8f)bits;
  const v8i out = (v8i)res & ~small;  // exp(x < -87) := 0
  return (v8f)out;
}
#endif

// e^x for x in [-87, 87] (Cephes polynomial). No clamp and no compare, so loops over it vectorise
// (philox_block.cpp calls it directly on arguments it knows are in range).
inline float exp_in_range(float x) {
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  int32_t ti;
  std::memcpy(&ti, &t, 4);
  const int32_t ni = ti - 0x4B400000;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500E-4f;
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (ni + 127) << 23;
  float p;
  std::memcpy(&p, &bits, 4);
  return y * p;
}

inline float fast_exp(float x) {
  const float lo = -87.0f;
  const float res = exp_in_range(x < lo ? lo : x);
  return x < lo ? 0.0f : res;
}

// x[i] /= d (true division, as reference.py does logits / temperature).
void divide_block(float* x, int64_t n, float d);
// Max of x[0:n]; *bad is set when an element is NaN or +inf.
float block_max(const float* x, int64_t n, bool* bad);
// sum_i exp(x[i] - m), m finite and >= every x[i].
float block_sum_exp(const float* x, int64_t n, float m);
// Max of x[0:n] (no checks).
float block_max_plain(const float* x, int64_t n);
// out[i] = w * x[i]; out[i] = out[i] + w * x[i] (the objective-by-objective combination).
void scale_into(float* out, const float* x, int64_t n, float w);
void add_scaled(float* out, const float* x, int64_t n, float w);
// t[i] = s[i] + beta * t[i] (tilt_logits: plain arithmetic, no masking or checks).
void tilt_plain(const float* s, float* t, int64_t n, float beta);
// t[i] = s[i] + beta * t[i] (t holds the combined values on entry), -inf where s[i] == -inf.
// Returns true when some column with a finite s gets a non-finite score.
bool tilt_masked(const float* s, float* t, int64_t n, float beta);
// Index of the first x[i] > thr, or n. Scans 64 at a time with vector compares: the top-k filter,
// where after the first blocks only a few columns in thousands beat the threshold.
int64_t first_above(const float* x, int64_t n, float thr);

// Running logsumexp fed block by block: (max, sum of exp(x - max)) with the sum kept in double.
struct BlockLse {
  float max = -kInf;
  double sum = 0.0;
  // x[0:n] with block maximum bmax (from block_max).
  void push(const float* x, int64_t n, float bmax) {
    if (bmax == -kInf) return;
    // A block entirely 60 below the running max adds < kBlock * e^-60 (relative): nothing in fp32.
    if (bmax < max - 60.0f) return;
    if (bmax > max) {
      sum = (max == -kInf) ? 0.0 : sum * std::exp(static_cast<double>(max) - static_cast<double>(bmax));
      max = bmax;
    }
    sum += block_sum_exp(x, n, max);
  }
  float value() const { return max == -kInf ? -kInf : static_cast<float>(max + std::log(sum)); }
};

// Dot product of an fp32 vector with a row of any float dtype, accumulated in fp32 over 8 lanes.
template <typename T>
inline float dot_row(const T* w, const float* h, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<float>(w[i + j]) * h[i + j];
  float s = 0.0f;
  for (; i < d; ++i) s += static_cast<float>(w[i]) * h[i];
  for (int j = 0; j < 8; ++j) s += acc[j];
  return s;
}

inline float dot_any(const void* base, at::ScalarType st, int64_t start, const float* h, int64_t d) {
  switch (st) {
    case at::kFloat:
      return dot_row(static_cast<const float*>(base) + start, h, d);
    case at::kHalf:
      return dot_row(static_cast<const c10::Half*>(base) + start, h, d);
    case at::kBFloat16:
      return dot_row(static_cast<const c10::BFloat16*>(base) + start, h, d);
    default:
      TORCH_CHECK(false, "mavis: unsupported dtype ", st);
  }
}

// Weights as a contiguous fp32 tensor, checked finite (a NaN weight would silently poison every
// score of its row).
inline at::Tensor checked_weights(const at::Tensor& w) {
  at::Tensor wc = w.contiguous();
  const float* p = wc.data_ptr<float>();
  for (int64_t i = 0; i < wc.numel(); ++i) TORCH_CHECK(std::isfinite(p[i]), "weights: contains NaN or inf");
  return wc;
}

// Pointer to row b's weights ([m] broadcast or [B, m]).
inline const float* weight_row(const at::Tensor& wc, int64_t b) {
  return wc.data_ptr<float>() + (wc.dim() == 2 ? b * wc.size(1) : 0);
}

}  // namespace cpu
}  // namespace mavis
