// Sampling helpers shared by tilted_sample and guided_sample: the noise key of a row, the nucleus
// (top_p) prefix of a ranked candidate list, and the Gumbel-max pick with the contract's rules
// (scores t + noise compared in double, ties to the lower column; see csrc/include/mavis/philox.h).
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"
#include "mavis/philox.h"
#include "topk_buffer.h"

namespace mavis {
namespace cpu {

// The Gumbel-max score t + noise of a column with finite t, from its 52-bit Philox draw k, or -inf
// when its noise provably cannot lift it to `best` (gumbel_bound_from_bits52): then it can neither
// beat nor tie the best score, and its two logs are skipped. Scores are compared in double.
inline double gumbel_score(float t, uint64_t k, double best) {
  const double td = static_cast<double>(t);
  if (td + gumbel_bound_from_bits52(k) < best) return -INFINITY;
  return td + gumbel_from_uniform(uniform_from_bits52(k));
}

// (seed, offset, row counter) of one row. One seed/offset for the batch: the row index is part of
// the counter. One per row: the counter row is 0, so a row draws the same noise in any batch.
struct NoiseKey {
  uint64_t seed;
  uint64_t offset;
  uint32_t row;
  uint64_t bits(int64_t col) const { return philox_bits52(seed, offset, row, static_cast<uint32_t>(col)); }
};

// For the columns cols[i] (scores ts[i], i < n) of one row: k[i] = their 52-bit Philox draws, and
// may_reach[i] = 0 when the noise of k[i] provably cannot lift ts[i] to any best score >= best_lo
// (a log-free screen), in one loop the compiler vectorises. In philox_block.cpp.
void gumbel_draws_block(const NoiseKey& nk, const uint32_t* cols, const float* ts, int64_t n, float best_lo,
                        uint64_t* k, int32_t* may_reach);

// The largest float <= x (x finite).
inline float float_at_most(double x) {
  const float f = static_cast<float>(x);
  return static_cast<double>(f) <= x ? f : std::nextafter(f, -kInf);
}

// Running Gumbel-max: argmax of t + noise(col) over the columns offered, ties to the lower column.
// The result does not depend on the order columns are offered in, nor on which are skipped by
// `reachable` (a skipped column's score is strictly below the best, so it cannot win or tie).
struct GumbelMax {
  double best = -INFINITY;
  int64_t col = -1;  // winning column (-1: none yet)
  int64_t tag = -1;  // the caller's handle of the winner (e.g. its index in a candidate list)
  float t = -kInf;   // the winner's score

  // False when a column with score t cannot reach the best whatever its noise (noise <= kGumbelMax).
  bool reachable(float ts) const { return !(static_cast<double>(ts) + kGumbelMax < best); }

  void offer(float ts, int64_t c, uint64_t k, int64_t tg) {
    const double s = gumbel_score(ts, k, best);
    if (col < 0 || s > best || (s == best && c < col)) {
      best = s;
      col = c;
      tag = tg;
      t = ts;
    }
  }
};

class SeedView {
 public:
  SeedView(const at::Tensor& seed, const at::Tensor& offset)
      : seed_(seed.contiguous()), offset_(offset.contiguous()) {
    per_row_ = seed_.numel() != 1 || offset_.numel() != 1;
  }
  NoiseKey key(int64_t b) const {
    const int64_t s = seed_.data_ptr<int64_t>()[seed_.numel() == 1 ? 0 : b];
    const int64_t o = offset_.data_ptr<int64_t>()[offset_.numel() == 1 ? 0 : b];
    return NoiseKey{static_cast<uint64_t>(s), static_cast<uint64_t>(o), per_row_ ? 0u : static_cast<uint32_t>(b)};
  }

 private:
  at::Tensor seed_, offset_;
  bool per_row_;
};

// log sum_j exp(c[j].key) over c[0:r], in double.
inline double lse_of(const KeyCol* c, int64_t r) {
  double m = -INFINITY;
  for (int64_t j = 0; j < r; ++j) m = std::max(m, static_cast<double>(c[j].key));
  if (m == -INFINITY) return m;
  double s = 0.0;
  for (int64_t j = 0; j < r; ++j) s += std::exp(static_cast<double>(c[j].key) - m);
  return m + std::log(s);
}

// c[0:n] ranked (key_col_before) with finite keys; lse = logsumexp of the keys over the whole keep
// set (of which c may be the best part). Returns how many leading entries the nucleus keeps: an
// entry is kept when the probability mass ranked strictly before it is < top_p. *complete is false
// when every entry was kept but their mass is still < top_p (c was too short to decide).
inline int64_t nucleus_prefix(const KeyCol* c, int64_t n, double top_p, double lse, bool* complete) {
  double before = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    if (!(before < top_p)) {
      *complete = true;
      return j;
    }
    before += std::exp(static_cast<double>(c[j].key) - lse);
  }
  *complete = !(before < top_p);
  return n;
}

struct Pick {
  int64_t index;  // into the candidate list
  float logp;     // log-probability under the distribution sampled from
};

// Gumbel-max over c[0:r] (ranked, finite keys): argmax of key + noise(col), ties to the lower
// column. Since noise <= kGumbelMax, the scan stops once key + kGumbelMax falls below the best.
inline Pick gumbel_pick(const KeyCol* c, int64_t r, const NoiseKey& nk, double lse_kept) {
  GumbelMax g;
  for (int64_t j = 0; j < r; ++j) {
    if (!g.reachable(c[j].key)) break;
    g.offer(c[j].key, c[j].col, nk.bits(c[j].col), j);
  }
  return Pick{g.tag, static_cast<float>(static_cast<double>(c[g.tag].key) - lse_kept)};
}

// The sampling step of a short keep set (top_k candidates): c holds (tilted score, column) of every
// kept column with a finite score, in any order. Applies the nucleus, then samples.
inline Pick sample_candidates(std::vector<KeyCol>& c, double top_p, const NoiseKey& nk) {
  std::sort(c.begin(), c.end(), key_col_before);
  const int64_t n = static_cast<int64_t>(c.size());
  double lse = lse_of(c.data(), n);
  int64_t r = n;
  if (top_p < 1.0) {
    bool complete = true;
    r = nucleus_prefix(c.data(), n, top_p, lse, &complete);
    lse = lse_of(c.data(), r);
  }
  return gumbel_pick(c.data(), r, nk, lse);
}

}  // namespace cpu
}  // namespace mavis
