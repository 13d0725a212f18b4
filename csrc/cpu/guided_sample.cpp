// guided_sample on the CPU, the fused Q-head MAVIS step, per row:
//   1. one pass over the logits: top-k of logits/temperature (threshold buffer) + full-row lse;
//   2. for each of the K candidates, gather row `cand` of every head and dot it with the hidden
//      state (fp32 accumulation), combine the objectives with the row's weights, tilt;
//   3. sample among the K candidates exactly as
//      tilted_sample(cand_logits, combined, ones, top_k=0, top_p) does in reference.guided_sample:
//      the noise column and the tie-break are the candidate's position 0..K-1.
// Only K rows of each [V, d] head are read; no vocabulary-sized temporary. Bad data in a row is
// raised after the loop or marked (mark_invalid): see row_errors.h.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"
#include "row_errors.h"
#include "row_scan.h"
#include "sampling.h"
#include "topk_buffer.h"

#if defined(__GNUC__)
#define MAVIS_PREFETCH(p) __builtin_prefetch((p), 0, 1)
#else
#define MAVIS_PREFETCH(p) ((void)0)
#endif

namespace mavis {
namespace cpu {

Sample3 guided_sample(const at::Tensor& logits, const at::Tensor& hidden_in, const at::Tensor& head_weight_in,
                      const OptTensor& head_bias, const at::Tensor& weights, double beta, int64_t top_k,
                      double temperature, double top_p, const at::Tensor& seed, const at::Tensor& offset,
                      bool mark_invalid) {
  check_logits(logits);
  check_temperature(temperature);
  check_top_p(top_p);
  TORCH_CHECK(std::isfinite(beta), "beta: must be finite, got ", beta);
  const int64_t B = logits.size(0), V = logits.size(1);
  check_float(hidden_in, "hidden");
  check_dim(hidden_in, 2, "hidden");
  check_same_device(hidden_in, logits, "hidden");
  TORCH_CHECK(hidden_in.size(0) == B, "hidden: expected ", B, " rows (one per logits row), got ", hidden_in.size(0));
  const int64_t d = hidden_in.size(1);
  check_float(head_weight_in, "head_weight");
  check_dim(head_weight_in, 3, "head_weight");
  check_same_device(head_weight_in, logits, "head_weight");
  const int64_t m = head_weight_in.size(0);
  TORCH_CHECK(m > 0, "head_weight: no objectives (m == 0)");
  TORCH_CHECK(head_weight_in.size(1) == V && head_weight_in.size(2) == d, "head_weight: expected shape [m, V=", V,
              ", d=", d, "], got ", head_weight_in.sizes());
  const bool has_bias = head_bias.has_value();
  if (has_bias) {
    check_float(*head_bias, "head_bias");
    check_same_device(*head_bias, logits, "head_bias");
    TORCH_CHECK(head_bias->dim() == 2 && head_bias->size(0) == m && head_bias->size(1) == V,
                "head_bias: expected shape [", m, ", ", V, "], got ", head_bias->sizes());
  }
  check_weights(weights, B, m, logits);
  const at::Tensor w = checked_weights(weights);
  TORCH_CHECK(top_k >= 1 && top_k <= V, "top_k: must satisfy 1 <= top_k <= V=", V, ", got ", top_k);
  check_seed(seed, offset, B, logits);
  const SeedView seeds(seed, offset);

  const at::Tensor hidden = hidden_in.stride(1) == 1 ? hidden_in : hidden_in.contiguous();
  const at::Tensor W = head_weight_in.stride(2) == 1 ? head_weight_in : head_weight_in.contiguous();
  const void* W_p = W.data_ptr();
  const at::ScalarType W_st = W.scalar_type();
  const int64_t W_s0 = W.stride(0), W_s1 = W.stride(1);
  const void* bias_p = has_bias ? head_bias->data_ptr() : nullptr;
  const at::ScalarType bias_st = has_bias ? head_bias->scalar_type() : at::kFloat;
  const int64_t bias_s0 = has_bias ? head_bias->stride(0) : 0, bias_s1 = has_bias ? head_bias->stride(1) : 0;

  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  int64_t* ids_p = ids.data_ptr<int64_t>();
  float* lt_p = logp_t.data_ptr<float>();
  float* lb_p = logp_b.data_ptr<float>();
  const float temp = static_cast<float>(temperature), beta_f = static_cast<float>(beta);

  RowErrors errors(B);

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(kBlock), h(static_cast<size_t>(d));
    TopKBuffer topk;
    std::vector<KeyCol> cands;
    for (int64_t b = b0; b < b1; ++b) {
      const LogitsRow row(logits, b, temp);
      BlockLse lse_s;
      topk.reset(top_k);
      RowError err = kRowOk;
      for (int64_t c0 = 0; c0 < V; c0 += kBlock) {
        const int64_t n = std::min(kBlock, V - c0);
        float smax;
        bool bad_logit = false;
        const float* sb = row.load(c0, n, s.data(), &smax, &bad_logit);
        if (bad_logit) {
          err = kRowLogitsNotFinite;
          break;
        }
        lse_s.push(sb, n, smax);
        topk.push_block(sb, n, c0, smax);
      }
      if (err == kRowOk && !(lse_s.max > -kInf)) err = kRowNoFiniteLogit;
      if (err != kRowOk) {
        errors.set(b, err);
        continue;
      }
      const std::vector<KeyCol>& top = topk.finish();  // position p = rank among the candidates

      load_block(hidden.data_ptr(), hidden.scalar_type(), b * hidden.stride(0), 1, d, h.data());
      const float* wr = weight_row(w, b);
      cands.clear();
      // The head rows are scattered over a [V, d] matrix far larger than the caches: prefetch the
      // rows of the next candidate while the current one is reduced (hides most of the latency).
      auto prefetch_rows = [&](int64_t p) {
        if (p >= top_k) return;
        const char* base = static_cast<const char*>(W_p);
        for (int64_t i = 0; i < m; ++i) {
          const char* row = base + (i * W_s0 + top[p].col * W_s1) * W.element_size();
          for (int64_t off = 0; off < d * static_cast<int64_t>(W.element_size()); off += 64)
            MAVIS_PREFETCH(row + off);
        }
      };
      prefetch_rows(0);
      for (int64_t p = 0; p < top_k; ++p) {
        prefetch_rows(p + 1);
        const float sc = top[p].key;
        if (sc == -kInf) continue;  // fewer than top_k finite logits: banned candidates are dropped
        const int64_t tok = top[p].col;
        float comb = 0.0f;
        for (int64_t i = 0; i < m; ++i) {
          float v = dot_any(W_p, W_st, i * W_s0 + tok * W_s1, h.data(), d);
          if (has_bias) v = v + load_one(bias_p, bias_st, i * bias_s0 + tok * bias_s1);
          comb = (i == 0) ? wr[0] * v : comb + wr[i] * v;
        }
        const float tv = tilt(sc, beta_f, comb);
        if (!(tv > -kInf && tv < kInf)) {
          err = kRowValuesNotFinite;
          break;
        }
        cands.push_back(KeyCol{tv, p});
      }
      if (err == kRowOk && cands.empty()) err = kRowNoCandidate;
      if (err != kRowOk) {
        errors.set(b, err);
        continue;
      }
      const Pick pk = sample_candidates(cands, top_p, seeds.key(b));
      const int64_t pos = cands[pk.index].col;
      ids_p[b] = top[pos].col;
      lt_p[b] = pk.logp;
      lb_p[b] = top[pos].key - lse_s.value();
    }
  });
  errors.finish_sample(mark_invalid, "NaN or inf in hidden, head_weight or head_bias", ids, logp_t, logp_b);
  return {ids, logp_t, logp_b};
}

}  // namespace cpu
}  // namespace mavis
