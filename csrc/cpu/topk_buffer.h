// Streaming top-k of one row under the contract's order: larger key first, lower column on ties.
//
// A size-k min-heap of packed (key, column) integers with the worst kept entry on top; `thr` is its
// key. Columns arrive in increasing
// order, so a later key equal to `thr` ranks after every kept entry and is rejected: the test
// `key > thr` is exact. Blocks are scanned with a vectorised "first key > thr" search, so a column
// that cannot enter costs one compare; for random order about k * ln(V / k) columns ever enter.
#pragma once
#include <algorithm>
#include <functional>
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

// A (key, column) pair packed into one integer whose unsigned order is the contract's order:
// ordered float bits above, the complemented column below (lower column = larger). -0.0 is folded
// into +0.0 first, as they compare equal. One integer compare per heap step, no branches on floats.
inline uint64_t pack_key_col(float key, int64_t col) {
  return (static_cast<uint64_t>(float_to_ordered(key + 0.0f)) << 32) |
         static_cast<uint64_t>(~static_cast<uint32_t>(col));
}
inline KeyCol unpack_key_col(uint64_t p) {
  return KeyCol{ordered_to_float(static_cast<uint32_t>(p >> 32)),
                static_cast<int64_t>(~static_cast<uint32_t>(p))};
}

class TopKBuffer {
 public:
  void reset(int64_t k) {
    TORCH_CHECK(k >= 1, "k: must be >= 1");
    k_ = k;
    heap_.clear();
    heap_.reserve(static_cast<size_t>(k));
    thr_ = -kInf;
  }

  // keys[0:n] are the keys of columns col0 .. col0+n-1 (no NaN; columns < 2^32); bmax is their max.
  void push_block(const float* keys, int64_t n, int64_t col0, float bmax) {
    int64_t i = 0;
    for (; size() < k_ && i < n; ++i) {  // filling: take everything (even -inf keys)
      heap_.push_back(pack_key_col(keys[i], col0 + i));
      std::push_heap(heap_.begin(), heap_.end(), std::greater<uint64_t>());
      if (size() == k_) thr_ = unpack_key_col(heap_.front()).key;
    }
    if (i >= n || !(bmax > thr_)) return;
    for (;;) {
      i += first_above(keys + i, n - i, thr_);
      if (i >= n) return;
      // replace the worst kept entry (the heap's minimum)
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<uint64_t>());
      heap_.back() = pack_key_col(keys[i], col0 + i);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<uint64_t>());
      thr_ = unpack_key_col(heap_.front()).key;
      ++i;
    }
  }

  // The best min(k, pushed) entries, best first.
  std::vector<KeyCol>& finish() {
    std::sort(heap_.begin(), heap_.end(), std::greater<uint64_t>());
    out_.clear();
    for (uint64_t p : heap_) out_.push_back(unpack_key_col(p));
    return out_;
  }

 private:
  int64_t size() const { return static_cast<int64_t>(heap_.size()); }

  int64_t k_ = 0;
  float thr_ = -kInf;
  std::vector<uint64_t> heap_;
  std::vector<KeyCol> out_;
};

}  // namespace cpu
}  // namespace mavis
