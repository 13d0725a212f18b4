// Ordered keys: map a float to an unsigned integer that sorts the same way, so that top-k can be
// done by radix select on integers (FlashInfer/RAFT "ordered key" trick). Also a total order on
// (value, id) pairs with the contract's tie rule: larger value first, then the lower token id.
#pragma once
#include <cstdint>
#include <cstring>
#include "macros.h"

namespace mavis {

MAVIS_HD uint32_t float_to_ordered(float f) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(f);
#else
  std::memcpy(&bits, &f, sizeof(bits));
#endif
  // Negative floats: flip every bit (larger magnitude sorts lower). Positive: flip the sign bit.
  return (bits & 0x80000000u) ? ~bits : (bits ^ 0x80000000u);
}

MAVIS_HD float ordered_to_float(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key ^ 0x80000000u) : ~key;
  float f;
#if defined(__CUDA_ARCH__)
  f = __uint_as_float(bits);
#else
  std::memcpy(&f, &bits, sizeof(f));
#endif
  return f;
}

// True when (va, ia) ranks before (vb, ib): larger value first, lower id breaks ties.
MAVIS_HD bool ranks_before(float va, int64_t ia, float vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}

}  // namespace mavis
