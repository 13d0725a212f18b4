// tilted_sample on the CPU: one streaming pass per row, then a sampling step on the keep set.
//
// * 0 < top_k < N, topk_on="base": the keep set depends on the logits only, so the pass reads the
//   logits alone (top-k + logsumexp for logp_base) and values are gathered at the k kept columns.
// * 0 < top_k < N, topk_on="tilted": the pass also reads values and ranks the tilted scores.
// * top_k == 0 (or N), top_p == 1: a Gumbel-max over the whole row in the same pass. Noise is only
//   computed for columns that can still win: noise <= kGumbelMax, so a column with
//   t + kGumbelMax < best is skipped, exactly (this saves most Philox/log calls on peaked rows).
// * top_k == 0 (or N), top_p < 1: the finite tilted scores of the row go to a per-row scratch
//   buffer (N entries; the one path with a vocabulary-sized temporary), then the nucleus is found
//   among the highest scores, widening the window only when its mass is short of top_p.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"
#include "row_scan.h"
#include "sampling.h"
#include "topk_buffer.h"

namespace mavis {
namespace cpu {

namespace {

struct RowOut {
  int64_t col;
  float logp_t;
};

// Gumbel-max over all finite tilted scores, fused into the row pass. Returns the column, its tilted
// score and the row's logsumexp of tilted scores (through *lse_t).
struct FullRowArgmax {
  float best = -kInf;
  float best_t = -kInf;
  int64_t best_col = -1;

  void consider(float t, int64_t col, const NoiseKey& nk) {
    const float s = t + nk.gumbel(col);
    if (best_col < 0 || s > best || (s == best && col < best_col)) {
      best = s;
      best_t = t;
      best_col = col;
    }
  }

  void push_block(const float* t, int64_t n, int64_t c0, float tmax, const NoiseKey& nk) {
    if (tmax == -kInf || tmax + kGumbelMax < best) return;
    // The block's best score first: it raises `best` so that the scan below skips more columns.
    int64_t jm = 0;
    while (t[jm] != tmax) ++jm;
    consider(t[jm], c0 + jm, nk);
    for (int64_t j = 0; j < n; ++j) {
      if (j == jm || t[j] + kGumbelMax < best) continue;  // -inf (banned) columns always skip
      consider(t[j], c0 + j, nk);
    }
  }
};

}  // namespace

Sample3 tilted_sample(const at::Tensor& logits, const OptTensor& values, const OptTensor& weights, double beta,
                      double temperature, int64_t top_k, double top_p, bool topk_on_tilted,
                      const OptTensor& candidate_ids, const at::Tensor& seed, const at::Tensor& offset) {
  check_logits(logits);
  check_temperature(temperature);
  check_top_p(top_p);
  TORCH_CHECK(std::isfinite(beta), "beta: must be finite, got ", beta);
  const int64_t B = logits.size(0), N = logits.size(1);
  TORCH_CHECK(top_k >= 0 && top_k <= N, "top_k: must satisfy 0 <= top_k <= N=", N, " (0 keeps every column), got ",
              top_k);
  const bool has_values = values.has_value();
  TORCH_CHECK(has_values || !weights.has_value(), "weights: given without values");
  at::Tensor w;
  if (has_values) {
    check_values(*values, logits);
    TORCH_CHECK(weights.has_value(), "weights: required when values are given");
    check_weights(*weights, B, values->size(1), logits);
    w = checked_weights(*weights);
  }
  at::Tensor ids_map;
  if (candidate_ids.has_value()) {
    const at::Tensor& c = *candidate_ids;
    TORCH_CHECK(c.scalar_type() == at::kLong, "candidate_ids: expected int64, got ", c.scalar_type());
    TORCH_CHECK(c.dim() == 2 && c.size(0) == B && c.size(1) == N, "candidate_ids: expected shape [B=", B,
                ", N=", N, "], got ", c.sizes());
    check_same_device(c, logits, "candidate_ids");
    ids_map = c.contiguous();
  }
  check_seed(seed, offset, B, logits);
  const SeedView seeds(seed, offset);

  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor ids = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor logp_t = at::empty({B}, opts);
  at::Tensor logp_b = at::empty({B}, opts);
  int64_t* ids_p = ids.data_ptr<int64_t>();
  float* lt_p = logp_t.data_ptr<float>();
  float* lb_p = logp_b.data_ptr<float>();
  const float temp = static_cast<float>(temperature), beta_f = static_cast<float>(beta);
  const bool restricted = top_k > 0 && top_k < N;

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(kBlock), t(kBlock), tmp(kBlock);
    TopKBuffer topk;
    std::vector<KeyCol> cands, scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const NoiseKey nk = seeds.key(b);
      const LogitsRow row(logits, b, temp);
      const ValuesRow vrow = has_values ? ValuesRow(*values, b, weight_row(w, b), beta_f) : ValuesRow();
      BlockLse lse_s, lse_t;
      FullRowArgmax argmax;
      const bool fused_argmax = !restricted && top_p >= 1.0;
      if (restricted) topk.reset(top_k);
      if (!restricted && !fused_argmax) scratch.clear();

      for (int64_t c0 = 0; c0 < N; c0 += kBlock) {
        const int64_t n = std::min(kBlock, N - c0);
        float smax;
        const float* sb = row.load(c0, n, s.data(), &smax);
        lse_s.push(sb, n, smax);
        if (restricted && !topk_on_tilted) {
          topk.push_block(sb, n, c0, smax);
          continue;
        }
        const float* tb = sb;
        float tmax = smax;
        if (has_values) {
          vrow.tilt_block(c0, n, sb, t.data(), tmp.data());
          tb = t.data();
          tmax = block_max_plain(tb, n);
        }
        if (restricted) {
          topk.push_block(tb, n, c0, tmax);
        } else {
          if (has_values) lse_t.push(tb, n, tmax);  // without values t == s: lse_s serves
          if (fused_argmax) {
            argmax.push_block(tb, n, c0, tmax, nk);
          } else {
            for (int64_t j = 0; j < n; ++j)
              if (tb[j] > -kInf) scratch.push_back(KeyCol{tb[j], c0 + j});
          }
        }
      }
      TORCH_CHECK(lse_s.max > -kInf, "logits: a row has no finite entry (all -inf)");
      const BlockLse& lse_kept = has_values ? lse_t : lse_s;

      RowOut r{-1, 0.0f};
      if (restricted) {
        cands.clear();
        for (const KeyCol& e : topk.finish()) {
          if (e.key == -kInf) continue;  // fewer than top_k finite columns: -inf ones are dropped
          const float tv = (topk_on_tilted || !has_values) ? e.key : vrow.tilt_one(e.col, e.key);
          cands.push_back(KeyCol{tv, e.col});
        }
        TORCH_CHECK(!cands.empty(), "logits: no finite candidate left in a row after top_k");
        const Pick p = sample_candidates(cands, top_p, nk);
        r = RowOut{cands[p.index].col, p.logp};
      } else if (fused_argmax) {
        TORCH_CHECK(argmax.best_col >= 0, "logits: no finite candidate left in a row after top_k");
        r = RowOut{argmax.best_col, argmax.best_t - lse_kept.value()};
      } else {
        TORCH_CHECK(!scratch.empty(), "logits: no finite candidate left in a row after top_k");
        const double lse_all = static_cast<double>(lse_kept.max) + std::log(lse_kept.sum);
        // Window of the highest scores: every column outside ranks after every column inside, so
        // if the window's mass reaches top_p the nucleus lies inside it.
        float width = 16.0f;
        for (;;) {
          const float thr = lse_kept.max - width;
          cands.clear();
          for (const KeyCol& e : scratch)
            if (e.key >= thr) cands.push_back(e);
          std::sort(cands.begin(), cands.end(), key_col_before);
          bool complete = true;
          const int64_t kept =
              nucleus_prefix(cands.data(), static_cast<int64_t>(cands.size()), top_p, lse_all, &complete);
          if (complete || cands.size() == scratch.size()) {
            const Pick p = gumbel_pick(cands.data(), kept, nk, lse_of(cands.data(), kept));
            r = RowOut{cands[p.index].col, p.logp};
            break;
          }
          width *= 2.0f;
        }
      }
      ids_p[b] = ids_map.defined() ? ids_map.data_ptr<int64_t>()[b * N + r.col] : r.col;
      lt_p[b] = r.logp_t;
      lb_p[b] = row.one(r.col) - lse_s.value();
    }
  });
  return {ids, logp_t, logp_b};
}

}  // namespace cpu
}  // namespace mavis
