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

// Uniform in the open interval (0, 1): 23 random bits, centred in their cell, so that log() never
// sees 0 or 1. Every value (k + 0.5) * 2^-23, k < 2^23, is exact in fp32, hence identical on every
// backend. (24 bits would not do: k + 0.5 rounds to an even integer for k >= 2^23 and the largest k
// gives u == 1.0f exactly, i.e. infinite Gumbel noise.) Range: [2^-24, 1 - 2^-24].
MAVIS_HD float philox_uniform(uint64_t seed, uint64_t offset, uint32_t row, uint32_t col) {
  const Philox4 r = philox4x32_10(col, row, static_cast<uint32_t>(offset),
                                  static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  return (static_cast<float>(r.x[0] >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// Gumbel(0, 1) noise: argmax_j (score_j + gumbel_j) is a draw from softmax(score).
MAVIS_HD float gumbel_from_uniform(float u) { return -logf(-logf(u)); }

MAVIS_HD float gumbel_noise(uint64_t seed, uint64_t offset, uint32_t row, uint32_t col) {
  return gumbel_from_uniform(philox_uniform(seed, offset, row, col));
}

// Upper bound of gumbel_noise (its value at the largest uniform, 1 - 2^-24: about 16.64), plus a
// margin for libm differences. Kernels use it to skip the noise of columns that cannot win the
// Gumbel-max: when score + kGumbelMax < best, score + noise < best as well.
constexpr float kGumbelMax = 16.75f;

}  // namespace mavis
