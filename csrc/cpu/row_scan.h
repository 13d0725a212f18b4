// Block-wise readers of one row of logits and of values, shared by the sampling kernels. A row is
// consumed in blocks of kBlock columns into fp32 scratch (L1-resident), so the vocabulary is read
// from memory once whatever the input dtype or strides.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "cpu_math.h"
#include "mavis/tilt.h"

namespace mavis {
namespace cpu {

// Row b of a [B, N] logits tensor, scaled by 1 / temperature.
struct LogitsRow {
  const void* data;
  at::ScalarType st;
  int64_t start;   // element offset of column 0
  int64_t stride;  // elements between columns
  float temperature;

  LogitsRow(const at::Tensor& logits, int64_t b, float temp)
      : data(logits.data_ptr()),
        st(logits.scalar_type()),
        start(b * logits.stride(0)),
        stride(logits.stride(1)),
        temperature(temp) {}

  // The block logits[b, c0 : c0+n] / temperature, as a pointer to fp32: straight into the tensor
  // when it is fp32, contiguous and temperature == 1, else converted into `scratch`. *bmax gets the
  // block maximum; *bad is set when the block has a NaN or +inf (they make the sampled distribution
  // undefined: the caller records the row as bad).
  const float* load(int64_t c0, int64_t n, float* scratch, float* bmax, bool* bad) const {
    const float* s = scratch;
    if (st == at::kFloat && stride == 1 && temperature == 1.0f) {
      s = static_cast<const float*>(data) + start + c0;
    } else {
      load_block(data, st, start + c0 * stride, stride, n, scratch);
      if (temperature != 1.0f) divide_block(scratch, n, temperature);
    }
    *bmax = block_max(s, n, bad);
    return s;
  }

  float one(int64_t col) const { return scale_logit(load_one(data, st, start + col * stride), temperature); }
};

// Row b of [B, m, N] values, combined with the row's weights and applied as a tilt.
struct ValuesRow {
  const void* data = nullptr;
  at::ScalarType st = at::kFloat;
  int64_t start = 0, s_obj = 0, s_col = 0, m = 0;
  const float* w = nullptr;
  float beta = 0.0f;

  ValuesRow() = default;
  ValuesRow(const at::Tensor& values, int64_t b, const float* w_row, float beta_)
      : data(values.data_ptr()),
        st(values.scalar_type()),
        start(b * values.stride(0)),
        s_obj(values.stride(1)),
        s_col(values.stride(2)),
        m(values.size(1)),
        w(w_row),
        beta(beta_) {}

  // comb[0:n] = sum_i w_i * values[b, i, c0 : c0+n], fp32, objectives in order (as reference.py).
  void combine(int64_t c0, int64_t n, float* comb, float* tmp) const {
    for (int64_t i = 0; i < m; ++i) {
      const int64_t off = start + i * s_obj + c0 * s_col;
      const float* v = tmp;
      if (st == at::kFloat && s_col == 1) {
        v = static_cast<const float*>(data) + off;  // fp32 rows are read in place
      } else {
        load_block(data, st, off, s_col, n, tmp);
      }
      if (i == 0) {
        scale_into(comb, v, n, w[0]);
      } else {
        add_scaled(comb, v, n, w[i]);
      }
    }
  }

  // t[0:n] = s + beta * comb, -inf where the base is -inf (a banned column stays banned). Returns
  // true when a column with a finite base gets a non-finite score (a bad row: NaN or inf in values).
  bool tilt_block(int64_t c0, int64_t n, const float* s, float* t, float* tmp) const {
    combine(c0, n, t, tmp);
    return tilt_masked(s, t, n, beta);
  }

  // The tilted score of one column whose scaled logit s is finite (the caller checks it is finite).
  float tilt_one(int64_t col, float s) const {
    float comb = w[0] * load_one(data, st, start + col * s_col);
    for (int64_t i = 1; i < m; ++i) comb = comb + w[i] * load_one(data, st, start + i * s_obj + col * s_col);
    return tilt(s, beta, comb);
  }
};

}  // namespace cpu
}  // namespace mavis
