// tilted_sample on the CPU: one streaming pass per row, then a sampling step on the keep set.
//
// * 0 < top_k < N, topk_on="base": the keep set depends on the logits only, so the pass reads the
//   logits alone (top-k + logsumexp for logp_base) and values are gathered at the k kept columns.
// * 0 < top_k < N, topk_on="tilted": the pass also reads values and ranks the tilted scores.
// * top_k == 0 (or N), top_p == 1: a Gumbel-max over the whole row in the same pass. Noise is only
//   computed for columns that can still win: noise <= kGumbelMax, so a column with
//   t + kGumbelMax < best is skipped, exactly; of the others, only those whose Philox draw can lift
//   them to the best pay for the logs (see FullRowArgmax).
// * top_k == 0 (or N), top_p < 1: the finite tilted scores of the row go to a per-row scratch
//   buffer (N entries; the one path with a vocabulary-sized temporary), then the nucleus is found
//   among the highest scores, widening the window only when its mass is short of top_p.
// Bad data in a row (NaN/+inf logits, no finite logit, non-finite tilted scores) is recorded per row
// and raised after the loop, or marked (id -1, NaN log-probs) with mark_invalid: see row_errors.h.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"
#include "row_errors.h"
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

// Gumbel-max over all finite tilted scores, fused into the row pass. Per block: the block's best
// column first (it raises `best`, so that more columns are skipped); then the columns that can
// still reach `best` (t + kGumbelMax >= best) get their Philox draws in one vectorised batch, which
// also screens out, without a log, the draws that cannot lift their column to `best`
// (gumbel_draws_block); only the rest (on a long row, a handful) are offered one by one.
struct FullRowArgmax {
  GumbelMax g;
  std::vector<uint32_t> cols;
  std::vector<float> ts;
  std::vector<uint64_t> bits;
  std::vector<int32_t> may;

  FullRowArgmax() : cols(kBlock), ts(kBlock), bits(kBlock), may(kBlock) {}
  void reset() { g = GumbelMax(); }

  void push_block(const float* t, int64_t n, int64_t c0, float tmax, const NoiseKey& nk) {
    if (tmax == -kInf || !g.reachable(tmax)) return;
    int64_t jm = 0;
    while (t[jm] != tmax) ++jm;
    g.offer(t[jm], c0 + jm, nk.bits(c0 + jm), c0 + jm);
    // `best` only rises during the block, so the screens below (with the current best) keep every
    // column that matters; -inf (banned) columns never pass.
    // (reach is rounded down to a float: the test may keep a column too many, never one too few)
    const float reach = float_at_most(g.best - kGumbelMax);
    int64_t m = 0;
    for (int64_t j = 0; j < n; ++j) {
      cols[m] = static_cast<uint32_t>(c0 + j);
      ts[m] = t[j];
      m += (j != jm) & (t[j] >= reach);
    }
    gumbel_draws_block(nk, cols.data(), ts.data(), m, float_at_most(g.best), bits.data(), may.data());
    for (int64_t i = 0; i < m; ++i)
      if (may[i]) g.offer(ts[i], cols[i], bits[i], cols[i]);
  }
};

}  // namespace

Sample3 tilted_sample(const at::Tensor& logits, const OptTensor& values, const OptTensor& weights, double beta,
                      double temperature, int64_t top_k, double top_p, bool topk_on_tilted,
                      const OptTensor& candidate_ids, const at::Tensor& seed, const at::Tensor& offset,
                      bool mark_invalid) {
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

  RowErrors errors(B);

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(kBlock), t(kBlock), tmp(kBlock);
    TopKBuffer topk;
    FullRowArgmax argmax;
    std::vector<KeyCol> cands, scratch;
    for (int64_t b = b0; b < b1; ++b) {
      const NoiseKey nk = seeds.key(b);
      const LogitsRow row(logits, b, temp);
      const ValuesRow vrow = has_values ? ValuesRow(*values, b, weight_row(w, b), beta_f) : ValuesRow();
      BlockLse lse_s, lse_t;
      const bool fused_argmax = !restricted && top_p >= 1.0;
      if (restricted) topk.reset(top_k);
      if (fused_argmax) argmax.reset();
      if (!restricted && !fused_argmax) scratch.clear();
      // Bad data ends the row, except bad values: the logits are still read to the end, since a bad
      // logit anywhere in the row has the higher priority (RowErrors).
      RowError err = kRowOk;

      for (int64_t c0 = 0; c0 < N; c0 += kBlock) {
        const int64_t n = std::min(kBlock, N - c0);
        float smax;
        bool bad_logit = false;
        const float* sb = row.load(c0, n, s.data(), &smax, &bad_logit);
        if (bad_logit) {
          err = kRowLogitsNotFinite;
          break;
        }
        lse_s.push(sb, n, smax);
        if (err != kRowOk) continue;
        if (restricted && !topk_on_tilted) {
          topk.push_block(sb, n, c0, smax);
          continue;
        }
        const float* tb = sb;
        float tmax = smax;
        if (has_values) {
          if (vrow.tilt_block(c0, n, sb, t.data(), tmp.data())) {
            err = kRowValuesNotFinite;
            continue;
          }
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
      if (err == kRowOk && !(lse_s.max > -kInf)) err = kRowNoFiniteLogit;
      if (err != kRowOk) {
        errors.set(b, err);
        continue;
      }
      const BlockLse& lse_kept = has_values ? lse_t : lse_s;

      RowOut r{-1, 0.0f};
      if (restricted) {
        cands.clear();
        for (const KeyCol& e : topk.finish()) {
          if (e.key == -kInf) continue;  // fewer than top_k finite columns: -inf ones are dropped
          const float tv = (topk_on_tilted || !has_values) ? e.key : vrow.tilt_one(e.col, e.key);
          if (!(tv > -kInf && tv < kInf)) {
            err = kRowValuesNotFinite;
            break;
          }
          cands.push_back(KeyCol{tv, e.col});
        }
        if (err == kRowOk && cands.empty()) err = kRowNoCandidate;
        if (err != kRowOk) {
          errors.set(b, err);
          continue;
        }
        const Pick p = sample_candidates(cands, top_p, nk);
        r = RowOut{cands[p.index].col, p.logp};
      } else if (fused_argmax) {
        if (argmax.g.col < 0) {
          errors.set(b, kRowNoCandidate);
          continue;
        }
        r = RowOut{argmax.g.col, argmax.g.t - lse_kept.value()};
      } else {
        if (scratch.empty()) {
          errors.set(b, kRowNoCandidate);
          continue;
        }
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
  errors.finish_sample(mark_invalid, "NaN or inf in values", ids, logp_t, logp_b);
  return {ids, logp_t, logp_b};
}

}  // namespace cpu
}  // namespace mavis
