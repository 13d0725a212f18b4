// Tilt math shared by every backend. The order of floating-point operations here is the contract
// with reference.py: combined = sum_i w_i * v_i accumulated in fp32 in objective order, then
// tilted = logit / temperature + beta * combined. Keeping one definition makes CPU, CUDA and the
// reference agree to the last bit wherever the compiler does not contract to FMA.
#pragma once
#include <cmath>
#include "macros.h"

namespace mavis {

MAVIS_HD float scale_logit(float logit, float temperature) { return logit / temperature; }

MAVIS_HD float tilt(float scaled_logit, float beta, float combined_value) {
  return scaled_logit + beta * combined_value;
}

// Numerically stable running logsumexp: (max, sum of exp(x - max)).
struct LseAcc {
  float max;
  float sum;
};

MAVIS_HD LseAcc lse_init() { return LseAcc{-INFINITY, 0.0f}; }

MAVIS_HD void lse_push(LseAcc& a, float x) {
  if (x == -INFINITY) return;
  if (x > a.max) {
    a.sum = a.sum * expf(a.max - x) + 1.0f;
    a.max = x;
  } else {
    a.sum += expf(x - a.max);
  }
}

MAVIS_HD LseAcc lse_merge(LseAcc a, LseAcc b) {
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  if (a.max >= b.max) return LseAcc{a.max, a.sum + b.sum * expf(b.max - a.max)};
  return LseAcc{b.max, b.sum + a.sum * expf(a.max - b.max)};
}

MAVIS_HD float lse_value(LseAcc a) { return a.max == -INFINITY ? -INFINITY : a.max + logf(a.sum); }

}  // namespace mavis
