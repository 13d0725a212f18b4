// Counter-based noise keyed by (seed, offset, row, column).
//
// Why counter-based: the CPU and CUDA kernels (and the pure-PyTorch reference in
// mavis_ext/reference.py) must draw *identical* noise for a given (seed, offset), regardless of
// how the vocabulary is split across threads or blocks. Philox4x32-10 (Salmon et al., SC'11) is a
// pure function of (counter, key), so every element's noise can be computed where it is needed.
//
// Layout of the key and counter (keep in sync with reference._philox_uniform):
//   key     = (seed_lo, seed_hi)
//   counter = (column, row, offset_lo, offset_hi)
// `row` is 0 when the caller passes one seed per row (batch-invariant streams), the row index when
// a single seed is shared by the whole batch.
#pragma once
#include <cstdint>
#include <cmath>
#include "macros.h"

namespace mavis {

struct Philox4 {
  uint32_t x[4];
};

MAVIS_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

MAVIS_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                               uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c0, hi0, lo0);
    philox_mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in the open interval (0, 1), in double: 52 random bits (the top 32 from word x[0], the
// next 20 from the top of word x[1]) centred in their cell, u = (k + 0.5) * 2^-52, k < 2^52.
// Why 52 and double: the Gumbel-max draw can only pick a column whose score is within the largest
// possible noise of the best one. With 23-bit floats that was about 16.6 nats, so a full-vocabulary
// tail 17-19 nats below the top was undersampled and anything further never drawn. With 52 bits the
// largest noise is -log(-log(1 - 2^-53)) ~= 36.74: a column 36.7 nats down has probability
// < e^-36.7 ~= 1.1e-16, so even V = 262,144 such columns lose < 3e-11 of mass, and the grid of u
// (2^-52) bounds the per-column error by ~2.2e-16. Every (k + 0.5) * 2^-52 needs 53 significant bits,
// so it is exact in double on every backend (53 random bits would need 54 and round). Range:
// [2^-53, 1 - 2^-53]: log() never sees 0 or 1.
MAVIS_HD uint64_t philox_bits52(uint64_t seed, uint64_t offset, uint32_t row, uint32_t col) {
  const Philox4 r = philox4x32_10(col, row, static_cast<uint32_t>(offset),
                                  static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  return (static_cast<uint64_t>(r.x[0]) << 20) | static_cast<uint64_t>(r.x[1] >> 12);
}

MAVIS_HD double uniform_from_bits52(uint64_t k) {
  return (static_cast<double>(k) + 0.5) * (1.0 / 4503599627370496.0);  // 2^-52
}

MAVIS_HD double philox_uniform(uint64_t seed, uint64_t offset, uint32_t row, uint32_t col) {
  return uniform_from_bits52(philox_bits52(seed, offset, row, col));
}

// Gumbel(0, 1) noise in double: argmax_j (score_j + gumbel_j) is a draw from softmax(score).
// Kernels add it to the fp32 score converted to double and compare in double.
MAVIS_HD double gumbel_from_uniform(double u) { return -log(-log(u)); }

MAVIS_HD double gumbel_noise(uint64_t seed, uint64_t offset, uint32_t row, uint32_t col) {
  return gumbel_from_uniform(philox_uniform(seed, offset, row, col));
}

// Upper bound of gumbel_noise (its value at the largest uniform, 1 - 2^-53: about 36.74), plus a
// margin for libm differences. Kernels use it to skip the noise of columns that cannot win the
// Gumbel-max: when score + kGumbelMax < best, score + noise < best as well (strictly, so a skipped
// column cannot tie the winner either; compare with `<`, never `<=`).
constexpr double kGumbelMax = 36.8;

// floor(log2(x)) for x > 0.
MAVIS_HD int floor_log2_u64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return 63 - __clzll(static_cast<long long>(x));
#elif defined(__GNUC__) || defined(__clang__)
  return 63 - __builtin_clzll(x);
#else
  int e = 0;
  while (x >>= 1) ++e;
  return e;
#endif
}

// An upper bound of the noise of draw k, gumbel_from_uniform(uniform_from_bits52(k)), without a
// log: it lets a kernel skip the two logs of a column whose noise cannot lift it to the best score
// (score + bound < best), which on a long full-vocabulary row is nearly every column.
// Why it holds: -log(u) >= 1 - u = (2M + 1) * 2^-53 with M = 2^52 - 1 - k, and 2M + 1 >= 2^e for
// e = floor(log2(2M + 1)), so noise = -log(-log(u)) <= (53 - e) * ln 2 (36.74 at k = 2^52 - 1, where
// it is attained; within ln 2 of the noise when u is near 1, where it matters). The 1e-9 margin
// covers the rounding of the computed logs.
MAVIS_HD double gumbel_bound_from_bits52(uint64_t k) {
  const uint64_t m2 = ((4503599627370495ull - k) << 1) | 1ull;  // 2M + 1, M = 2^52 - 1 - k
  return static_cast<double>(53 - floor_log2_u64(m2)) * 0.69314718055994530942 + 1e-9;
}

}  // namespace mavis
