// Streaming top-k of one row under the contract's order: larger key first, lower column on ties.
//
// A threshold buffer: keys are appended while they beat the current k-th best (`thr`); when the
// buffer is full, nth_element keeps the best k and raises `thr`. Columns arrive in increasing order,
// so a later key equal to `thr` ranks after the k-th and is rejected: the test `key > thr` is exact.
// Whole blocks whose maximum does not beat `thr` are skipped, which after the first few thousand
// columns is almost every block. Cost: one compare per column plus O(k log(V/k)) insertions.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_math.h"
#include "mavis/ordered_key.h"

namespace mavis {
namespace cpu {

struct KeyCol {
  float key;
  int64_t col;
};

inline bool key_col_before(const KeyCol& a, const KeyCol& b) { return ranks_before(a.key, a.col, b.key, b.col); }

class TopKBuffer {
 public:
  void reset(int64_t k) {
    k_ = k;
    cap_ = 2 * k + 64;
    buf_.clear();
    buf_.reserve(static_cast<size_t>(cap_));
    thr_ = -kInf;
  }

  // keys[0:n] are the keys of columns col0 .. col0+n-1 (no NaN); bmax is their maximum.
  void push_block(const float* keys, int64_t n, int64_t col0, float bmax) {
    int64_t i = 0;
    while (size() < k_ && i < n) push(keys[i], col0 + i), ++i;  // filling: take everything
    if (!(bmax > thr_)) return;
    for (;;) {
      i += first_above(keys + i, n - i, thr_);
      if (i >= n) return;
      push(keys[i], col0 + i);
      ++i;
    }
  }

  // The best min(k, pushed) entries, sorted by the contract's order.
  std::vector<KeyCol>& finish() {
    if (size() > k_) compact();
    std::sort(buf_.begin(), buf_.end(), key_col_before);
    return buf_;
  }

 private:
  int64_t size() const { return static_cast<int64_t>(buf_.size()); }
  void push(float key, int64_t col) {
    buf_.push_back(KeyCol{key, col});
    if (size() >= cap_) compact();
  }
  void compact() {
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), key_col_before);
    buf_.resize(static_cast<size_t>(k_));
    thr_ = buf_[static_cast<size_t>(k_ - 1)].key;
  }

  int64_t k_ = 0;
  int64_t cap_ = 0;
  float thr_ = -kInf;
  std::vector<KeyCol> buf_;
};

}  // namespace cpu
}  // namespace mavis
