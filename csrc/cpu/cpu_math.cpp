// Out-of-line hot reductions of cpu_math.h, so that they can be cloned per ISA in one place.
#include "cpu_math.h"

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
    acc = v8_select(v > acc, v, acc);
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
    acc = v8_select(v > acc, v, acc);
  }
  for (int j = 0; j < 8; ++j) m = acc[j] > m ? acc[j] : m;
#endif
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

MAVIS_CLONES int64_t first_above(const float* x, int64_t n, float thr) {
  int64_t i = 0;
#ifdef MAVIS_VEC_EXT
  // 64 columns per test while far from the end: the compares are cheap, reducing the lane mask to
  // a bool is not. Then 8 at a time, so that only the last < 8 columns are scalar.
  typedef uint64_t v4u __attribute__((vector_size(32)));
  const v8f t = v8_broadcast(thr);
  for (; i + 64 <= n; i += 64) {
    v8i hit = v8_load(x + i) > t;
    for (int g = 8; g < 64; g += 8) hit |= v8_load(x + i + g) > t;
    const v4u u = (v4u)hit;
    if ((u[0] | u[1] | u[2] | u[3]) != 0) break;
  }
  for (; i + 8 <= n; i += 8) {
    const v4u u = (v4u)(v8_load(x + i) > t);
    if ((u[0] | u[1] | u[2] | u[3]) != 0) break;
  }
#endif
  for (; i < n; ++i)
    if (x[i] > thr) return i;
  return n;
}

MAVIS_CLONES void half_to_float_block(const uint16_t* h, int64_t n, float* out) {
  // Exact fp16 -> fp32 without F16C (F. Giesen's "half_to_float_fast5"): shift exponent and
  // mantissa into place, rebias by multiplying with 2^112 (exact, and it normalises subnormals),
  // then restore Inf/NaN exponents and the sign. Branch-free, so it vectorises.
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = h[i];
    uint32_t bits = (u & 0x7fffu) << 13;
    float f;
    std::memcpy(&f, &bits, 4);
    f *= 5.192296858534828e+33f;  // 2^112
    std::memcpy(&bits, &f, 4);
    bits |= (f >= 65536.0f) ? (255u << 23) : 0u;
    bits |= (u & 0x8000u) << 16;
    std::memcpy(&out[i], &bits, 4);
  }
}

MAVIS_CLONES void scale_into(float* out, const float* x, int64_t n, float w) {
  for (int64_t i = 0; i < n; ++i) out[i] = w * x[i];
}

MAVIS_CLONES void add_scaled(float* out, const float* x, int64_t n, float w) {
  for (int64_t i = 0; i < n; ++i) out[i] = out[i] + w * x[i];
}

MAVIS_CLONES void tilt_plain(const float* s, float* t, int64_t n, float beta) {
  for (int64_t i = 0; i < n; ++i) t[i] = s[i] + beta * t[i];
}

MAVIS_CLONES bool tilt_masked(const float* s, float* t, int64_t n, float beta) {
  int64_t i = 0;
  int bad = 0;
#ifdef MAVIS_VEC_EXT
  const v8f b = v8_broadcast(beta), ninf = v8_broadcast(-kInf), inf = v8_broadcast(kInf);
  v8i vbad = v8i{0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8) {
    const v8f sv = v8_load(s + i);
    const v8f x = sv + b * v8_load(t + i);  // tilt(): scaled logit + beta * combined, same order
    const v8i base_finite = sv > ninf;
    vbad |= base_finite & ~((x > ninf) & (x < inf));
    const v8f out = v8_select(base_finite, x, ninf);
    std::memcpy(t + i, &out, sizeof(out));
  }
  for (int j = 0; j < 8; ++j) bad |= vbad[j];
#endif
  for (; i < n; ++i) {
    const float x = s[i] + beta * t[i];
    const bool base_finite = s[i] > -kInf;
    bad |= base_finite & !((x > -kInf) & (x < kInf));
    t[i] = base_finite ? x : -kInf;
  }
  return bad != 0;
}

}  // namespace cpu
}  // namespace mavis
