// topk_candidates on the CPU: one streaming pass per row computes the top-k of logits/temperature
// (threshold buffer, see topk_buffer.h) and the full-row logsumexp together. A row with bad logits
// (NaN/+inf, or none finite) is raised after the loop, or marked with mark_invalid (ids -1, values
// and lse NaN): see row_errors.h.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"
#include "row_errors.h"
#include "row_scan.h"
#include "topk_buffer.h"

namespace mavis {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates(const at::Tensor& logits, int64_t k,
                                                               double temperature, bool mark_invalid) {
  check_logits(logits);
  check_temperature(temperature);
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(k >= 1 && k <= V, "k: must satisfy 1 <= k <= V=", V, ", got ", k);
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor vals = at::empty({B, k}, opts);
  at::Tensor ids = at::empty({B, k}, opts.dtype(at::kLong));
  at::Tensor lse = at::empty({B}, opts);
  float* vals_p = vals.data_ptr<float>();
  int64_t* ids_p = ids.data_ptr<int64_t>();
  float* lse_p = lse.data_ptr<float>();
  const float temp = static_cast<float>(temperature);

  RowErrors errors(B);

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(kBlock);
    TopKBuffer topk;
    for (int64_t b = b0; b < b1; ++b) {
      const LogitsRow row(logits, b, temp);
      BlockLse acc;
      topk.reset(k);
      RowError err = kRowOk;
      for (int64_t c0 = 0; c0 < V; c0 += kBlock) {
        const int64_t n = std::min(kBlock, V - c0);
        float bmax;
        bool bad_logit = false;
        const float* sb = row.load(c0, n, s.data(), &bmax, &bad_logit);
        if (bad_logit) {
          err = kRowLogitsNotFinite;
          break;
        }
        acc.push(sb, n, bmax);
        topk.push_block(sb, n, c0, bmax);
      }
      if (err == kRowOk && !(acc.max > -kInf)) err = kRowNoFiniteLogit;
      if (err != kRowOk) {
        errors.set(b, err);
        continue;
      }
      const std::vector<KeyCol>& best = topk.finish();
      for (int64_t j = 0; j < k; ++j) {
        vals_p[b * k + j] = best[j].key;
        ids_p[b * k + j] = best[j].col;
      }
      lse_p[b] = acc.value();
    }
  });
  if (errors.any()) {
    if (!mark_invalid) errors.raise_first("");
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t b = 0; b < B; ++b) {
      if (!errors.bad(b)) continue;
      for (int64_t j = 0; j < k; ++j) {
        vals_p[b * k + j] = nan;
        ids_p[b * k + j] = -1;
      }
      lse_p[b] = nan;
    }
  }
  return {vals, ids, lse};
}

}  // namespace cpu
}  // namespace mavis
