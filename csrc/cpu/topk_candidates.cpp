// topk_candidates on the CPU: one streaming pass per row computes the top-k of logits/temperature
// (threshold buffer, see topk_buffer.h) and the full-row logsumexp together.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"
#include "row_scan.h"
#include "topk_buffer.h"

namespace mavis {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_candidates(const at::Tensor& logits, int64_t k,
                                                               double temperature) {
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

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(kBlock);
    TopKBuffer topk;
    for (int64_t b = b0; b < b1; ++b) {
      const LogitsRow row(logits, b, temp);
      BlockLse acc;
      topk.reset(k);
      for (int64_t c0 = 0; c0 < V; c0 += kBlock) {
        const int64_t n = std::min(kBlock, V - c0);
        float bmax;
        const float* sb = row.load(c0, n, s.data(), &bmax);
        acc.push(sb, n, bmax);
        topk.push_block(sb, n, c0, bmax);
      }
      TORCH_CHECK(acc.max > -kInf, "logits: a row has no finite entry (all -inf)");
      const std::vector<KeyCol>& best = topk.finish();
      for (int64_t j = 0; j < k; ++j) {
        vals_p[b * k + j] = best[j].key;
        ids_p[b * k + j] = best[j].col;
      }
      lse_p[b] = acc.value();
    }
  });
  return {vals, ids, lse};
}

}  // namespace cpu
}  // namespace mavis
