// Per-row data errors of the sampling and top-k kernels, and what is done with them.
//
// A kernel never throws from inside its parallel row loop: each row records the first error kind
// it finds (the kinds are ordered by priority, and a row keeps scanning for a higher-priority one),
// and after the loop either
//   * raise mode: the error of highest priority present in the batch is raised, so the message does
//     not depend on thread scheduling or on which row has it (the order reference.py checks in), or
//   * mark mode (mark_invalid=True): the rows with an error get id -1 and NaN outputs, and every
//     other row is exactly what it would be without them.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace mavis {
namespace cpu {

// Priority order: a lower value is reported first.
enum RowError : uint8_t {
  kRowOk = 0,
  kRowLogitsNotFinite = 1,  // NaN or +inf logit
  kRowNoFiniteLogit = 2,    // every logit is -inf
  kRowValuesNotFinite = 3,  // a used column's tilted score is NaN or +-inf
  kRowNoCandidate = 4,      // nothing finite left after top_k (a safety net)
  kRowErrorKinds = 5,
};

class RowErrors {
 public:
  explicit RowErrors(int64_t B) : err_(static_cast<size_t>(B), kRowOk) {}

  // Rows are written by one thread each: no synchronisation needed.
  void set(int64_t b, RowError e) { err_[static_cast<size_t>(b)] = e; }
  bool any() const {
    for (uint8_t e : err_)
      if (e != kRowOk) return true;
    return false;
  }
  bool bad(int64_t b) const { return err_[static_cast<size_t>(b)] != kRowOk; }

  // Raise the highest-priority error of the batch, if any. `values_what` says what the tilted
  // scores came from, e.g. "NaN or inf in values".
  void raise_first(const char* values_what) const {
    uint8_t worst = kRowErrorKinds;
    for (uint8_t e : err_)
      if (e != kRowOk && e < worst) worst = e;
    TORCH_CHECK(worst != kRowLogitsNotFinite, "logits: contains NaN or +inf (after division by temperature)");
    TORCH_CHECK(worst != kRowNoFiniteLogit, "logits: a row has no finite entry (all -inf)");
    TORCH_CHECK(worst != kRowValuesNotFinite, "values: tilted scores are not finite (", values_what, ")");
    TORCH_CHECK(worst != kRowNoCandidate, "logits: no finite candidate left in a row after top_k");
  }

  // Mark mode for the sampling ops: ids -1, NaN log-probabilities on bad rows.
  void mark_sample(at::Tensor& ids, at::Tensor& logp_t, at::Tensor& logp_b) const {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    int64_t* ip = ids.data_ptr<int64_t>();
    float* tp = logp_t.data_ptr<float>();
    float* bp = logp_b.data_ptr<float>();
    for (size_t b = 0; b < err_.size(); ++b) {
      if (err_[b] == kRowOk) continue;
      ip[b] = -1;
      tp[b] = nan;
      bp[b] = nan;
    }
  }

  // Either raise (mark == false) or mark the bad rows of a sampling op's outputs.
  void finish_sample(bool mark, const char* values_what, at::Tensor& ids, at::Tensor& logp_t,
                     at::Tensor& logp_b) const {
    if (!any()) return;
    if (!mark) raise_first(values_what);
    mark_sample(ids, logp_t, logp_b);
  }

 private:
  std::vector<uint8_t> err_;
};

}  // namespace cpu
}  // namespace mavis
