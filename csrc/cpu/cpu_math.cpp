// Out-of-line hot reductions of cpu_math.h, so that they can be cloned per ISA in one place.
#include "cpu_math.h"

// On x86-64 Linux with GCC, compile an AVX2 clone next to the baseline and let the loader pick
// (ifunc): safe on CPUs without AVX2. "avx2" does not enable FMA, so no multiply-add contraction
// can change results between the clones.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MAVIS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MAVIS_CLONES
#endif

namespace mavis {
namespace cpu {

// x[i] /= d (true division, as reference.py does logits / temperature).
MAVIS_CLONES void divide_block(float* x, int64_t n, float d) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / d;
}

// Max of x[0:n]; *bad is set when an element is NaN or +inf.
MAVIS_CLONES float block_max(const float* x, int64_t n, bool* bad) {
  int64_t i = 0;
  float m = -kInf;
  int bb = 0;
#ifdef MAVIS_VEC_EXT
  v8f acc = v8_broadcast(-kInf);
  v8i vbad = v8i{0, 0, 0, 0, 0, 0, 0, 0};
  const v8f inf = v8_broadcast(kInf);
  for (; i + 8 <= n; i += 8) {
    const v8f v = v8_load(x + i);
    acc = v > acc ? v : acc;
    vbad |= ~(v < inf);  // NaN or +inf
  }
  for (int j = 0; j < 8; ++j) {
    m = acc[j] > m ? acc[j] : m;
    bb |= vbad[j];
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i];
    m = v > m ? v : m;
    bb |= !(v < kInf);
  }
  *bad = bb != 0;
  return m;
}

MAVIS_CLONES float block_sum_exp(const float* x, int64_t n, float m) {
  int64_t i = 0;
  float s = 0.0f;
#ifdef MAVIS_VEC_EXT
  v8f acc = v8_broadcast(0.0f);
  const v8f mv = v8_broadcast(m);
  for (; i + 8 <= n; i += 8) acc += fast_exp_v8(v8_load(x + i) - mv);
  for (int j = 0; j < 8; ++j) s += acc[j];
#endif
  for (; i < n; ++i) s += fast_exp(x[i] - m);
  return s;
}

MAVIS_CLONES float block_max_plain(const float* x, int64_t n) {
  int64_t i = 0;
  float m = -kInf;
#ifdef MAVIS_VEC_EXT
  v8f acc = v8_broadcast(-kInf);
  for (; i + 8 <= n; i += 8) {
    const v8f v = v8_load(x + i);
    acc = v > acc ? v : acc;
  }
  for (int j = 0; j < 8; ++j) m = acc[j] > m ? acc[j] : m;
#endif
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

MAVIS_CLONES int64_t first_above(const float* x, int64_t n, float thr) {
  int64_t i = 0;
#ifdef MAVIS_VEC_EXT
  // 64 columns per test: the compares are cheap, reducing the lane mask to a bool is not.
  typedef uint64_t v4u __attribute__((vector_size(32)));
  const v8f t = v8_broadcast(thr);
  for (; i + 64 <= n; i += 64) {
    v8i hit = v8_load(x + i) > t;
    for (int g = 8; g < 64; g += 8) hit |= v8_load(x + i + g) > t;
    const v4u u = (v4u)hit;
    if ((u[0] | u[1] | u[2] | u[3]) != 0) break;
  }
#endif
  for (; i < n; ++i)
    if (x[i] > thr) return i;
  return n;
}

}  // namespace cpu
}  // namespace mavis
