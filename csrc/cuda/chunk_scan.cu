// Phase 1 of the split-vocabulary kernels (see chunk_scan.cuh) and the top-k merge (phase 2 of
// topk_candidates and guided_sample).
//
// Per-chunk exact top-k without sorting the chunk: every thread holds 8*NG columns in registers.
// The k-th largest of the 256 per-thread maxima, tau, is a lower bound of the chunk's k-th largest
// key (k distinct threads each own an entry >= tau), so the chunk's top-k lies among the entries
// >= tau. For typical logits that leaves ~k(1 + small) survivors, compacted to shared memory and
// selected exactly by select_topk (block_topk.cuh). Ties / flat rows only make the survivor list
// longer (at most the whole chunk, which shared memory holds), never wrong.
#include "block_topk.cuh"
#include "chunk_scan.cuh"

namespace mavis_cuda {
namespace {

constexpr int kNT = 256;

template <int MODE, int NG>
struct ScanSmem {
  static constexpr bool kTopk = MODE != kFullGumbel;
  static constexpr int kChunk = kNT * 8 * NG;
  static constexpr int kSurv = kTopk ? kChunk : 1;
  SelectSmem<kNT> sel;
  uint32_t tmax[kNT];
  uint32_t surv_key[kSurv];
  int32_t surv_id[kSurv];
  int ns;
  mavis::LseAcc lse_s[kNT / 32];
  ArgBest arg_s[kNT / 32];
  int or_s[kNT / 32];
};

// LCODE: the logits dtype (DtypeCode) fixed at compile time for the hot top-k-on-logits mode, or -1
// to read it from the config at run time (tilted / full-vocab modes, whose value dtype is always a
// run-time choice): 8 kernels instead of 24, which matters for the build time.
template <int LCODE, int MODE, int NG>
__global__ void __launch_bounds__(kNT) chunk_scan_kernel(const ScanConfig a) {
  constexpr int ITEMS = 8 * NG;
  constexpr int64_t CHUNK = kNT * 8 * NG;
  constexpr bool kTopk = MODE != kFullGumbel;
  constexpr bool kTilt = MODE != kTopkBase;
  __shared__ ScanSmem<MODE, NG> sm;

  const int tid = threadIdx.x;
  const int64_t lr = blockIdx.y;      // row inside this launch (workspace index)
  const int64_t row = a.row0 + lr;    // row of the batch (inputs, noise)
  const int chunk = blockIdx.x;
  const int64_t N = a.N;
  const int64_t c0 = static_cast<int64_t>(chunk) * CHUNK;
  const int64_t c1 = c0 + CHUNK < N ? c0 + CHUNK : N;
  const int64_t lrow = row * a.ld_logits;  // element offset of the row

  float base[ITEMS];
  float tilt[kTilt ? ITEMS : 1];
  int flags = 0;

#pragma unroll
  for (int g = 0; g < NG; ++g) {
    const int64_t col0 = c0 + static_cast<int64_t>(g * kNT + tid) * 8;
    const int64_t rem = c1 - col0;
    const int nv = rem <= 0 ? 0 : (rem >= 8 ? 8 : static_cast<int>(rem));
    float f[8];
    if (nv > 0) {
      if constexpr (LCODE == kF32) load8<float>(static_cast<const float*>(a.logits) + lrow + col0, a.vec_logits, nv, f);
      else if constexpr (LCODE == kF16)
        load8<c10::Half>(static_cast<const c10::Half*>(a.logits) + lrow + col0, a.vec_logits, nv, f);
      else if constexpr (LCODE == kBF16)
        load8<c10::BFloat16>(static_cast<const c10::BFloat16*>(a.logits) + lrow + col0, a.vec_logits, nv, f);
      else load8_rt(a.logits, a.logits_code, lrow + col0, a.vec_logits, nv, f);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) f[e] = -INFINITY;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) base[g * 8 + e] = e < nv ? scale_logit_rn(f[e], a.temperature) : -INFINITY;
    if constexpr (kTilt) {
      float acc[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = 0.0f;
      if (nv > 0) {
        const float* w = a.weights + (a.w_per_row ? row * a.m : 0);
        for (int i = 0; i < a.m; ++i) {
          float v[8];
          load8_rt(a.values, a.values_code, row * a.vs_b + i * a.vs_m + col0, a.vec_values, nv, v);
          const float wi = w[i];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[e] = combine_step_rn(acc[e], wi, v[e]);
        }
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) tilt[g * 8 + e] = tilt_rn(base[g * 8 + e], a.beta, acc[e]);
    }
  }

  // classify, per-thread logsumexp of the scaled logits (two passes over registers)
  float bmax = -INFINITY;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const float b = base[j];
    if (isnan(b)) {
      flags |= kLogitsNaN;
    } else if (b == INFINITY) {
      flags |= kLogitsPosInf;
    } else if (b > -INFINITY) {
      flags |= kHasFinite;
      bmax = fmaxf(bmax, b);
      if constexpr (kTilt) {
        if (!is_finite_f(tilt[j])) flags |= kValuesBad;
      }
    }
  }
  float bsum = 0.0f;
#pragma unroll
  for (int j = 0; j < ITEMS; ++j)
    if (is_finite_f(base[j])) bsum += expf(base[j] - bmax);
  mavis::LseAcc lb{bmax, bsum};
  lb = block_lse<kNT>(lb, sm.lse_s);
  flags = block_or<kNT>(flags, sm.or_s);

  ChunkRec rec;
  rec.lse_max = lb.max;
  rec.lse_sum = lb.sum;
  rec.t_max = -INFINITY;
  rec.t_sum = 0.0f;
  rec.best_score = -INFINITY;
  rec.best_t = 0.0f;
  rec.best_col = -1;
  rec.flags = flags;
  rec.count = 0;
  rec.ninf = 0;

  if constexpr (MODE == kFullGumbel) {
    // keep = isfinite(t); Gumbel-max over the kept columns and logsumexp of t over them
    float tm = -INFINITY;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j)
      if (is_finite_f(tilt[j])) tm = fmaxf(tm, tilt[j]);
    float ts = 0.0f;
    ArgBest best{-INFINITY, -1, 0.0f};
    // Noise of the thread's best column first; afterwards a column that cannot win against the
    // current winner skips work: cannot_win (t + kGumbelMax < best) skips the Philox rounds, and
    // t + gumbel_bound_from_bits52(bits) < best the two double logs (the bound is ~0.7 for most
    // draws, so on a long row nearly every column stops there). Both are strict upper bounds of
    // the score, so the winner is the same as without skipping: argmax of (double)t + noise, ties
    // to the lower column, as on the CPU.
    int jm = -1;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j)
      if (jm < 0 && is_finite_f(tilt[j]) && tilt[j] == tm) jm = j;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      if (j == jm) {
        const int64_t col = c0 + static_cast<int64_t>((j / 8) * kNT + tid) * 8 + (j % 8);
        best = ArgBest{static_cast<double>(tilt[j]) + gumbel_at(a.noise, row, col), col, tilt[j]};
      }
    }
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      if (is_finite_f(tilt[j])) {
        ts += expf(tilt[j] - tm);
        if (j != jm && !cannot_win(tilt[j], best.score)) {
          const int64_t col = c0 + static_cast<int64_t>((j / 8) * kNT + tid) * 8 + (j % 8);
          const uint64_t bits = noise_bits_at(a.noise, row, col);
          const double td = static_cast<double>(tilt[j]);
          if (!(td + mavis::gumbel_bound_from_bits52(bits) < best.score)) {
            const ArgBest cand{td + mavis::gumbel_from_uniform(mavis::uniform_from_bits52(bits)), col, tilt[j]};
            best = arg_merge(best, cand);
          }
        }
      }
    }
    const mavis::LseAcc lt = block_lse<kNT>(mavis::LseAcc{tm, ts}, sm.lse_s);
    best = block_arg<kNT>(best, sm.arg_s);
    rec.t_max = lt.max;
    rec.t_sum = lt.sum;
    rec.best_score = best.score;
    rec.best_t = best.t;
    rec.best_col = best.col;
  }

  if constexpr (kTopk) {
    // ordered keys of the selection score; 0 marks "not a candidate" (below every finite key)
    uint32_t key[ITEMS];
    uint32_t my_max = 0;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      float s;
      if constexpr (kTilt) s = tilt[j];
      else s = base[j];
      const bool ok = is_finite_f(base[j]) && is_finite_f(s);
      key[j] = ok ? score_key(s) : 0u;
      my_max = key[j] > my_max ? key[j] : my_max;
    }
    sm.tmax[tid] = my_max;
    if (tid == 0) sm.ns = 0;
    __syncthreads();
    const int k = a.k;
    uint32_t tau;
    int gt, eq;
    radix_kth<kNT>(
        kNT, k,
        [&](int i, uint32_t& kk, int32_t& id) {
          kk = sm.tmax[i];
          id = i;
          return true;
        },
        sm.sel, tau, gt, eq);
    const uint32_t thr = tau > 1u ? tau : 1u;
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      if (key[j] >= thr) {
        const int pos = atomicAdd(&sm.ns, 1);
        sm.surv_key[pos] = key[j];
        sm.surv_id[pos] = static_cast<int32_t>(c0 + static_cast<int64_t>((j / 8) * kNT + tid) * 8 + (j % 8));
      }
    }
    __syncthreads();
    const int ns = sm.ns;
    const int cnt = select_topk<kNT>(
        ns, k,
        [&](int i, uint32_t& kk, int32_t& id) {
          kk = sm.surv_key[i];
          id = sm.surv_id[i];
          return true;
        },
        sm.sel);
    // Fewer than k finite entries (cnt is block-uniform): the merge fills a short row with the
    // lowest -inf columns (the reference's stable sort puts them next, in column order). Record
    // the chunk's first k - cnt of them in the free slots, so the merge never rescans the row.
    // Columns run in (granule, thread, element) order; sm.surv_id is free again and holds them.
    int nstore = 0;
    if (a.want_ninf && cnt < k) {
      const int room = k - cnt;
      int done = 0;  // -inf columns of the earlier granules (block-uniform)
#pragma unroll
      for (int g = 0; g < NG; ++g) {
        const int64_t col0 = c0 + static_cast<int64_t>(g * kNT + tid) * 8;
        int mine = 0;
#pragma unroll
        for (int e = 0; e < 8; ++e) mine += (col0 + e < c1 && base[g * 8 + e] == -INFINITY) ? 1 : 0;
        int total;
        int pos = done + block_exclusive_scan<kNT>(mine, sm.or_s, &total);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          if (col0 + e < c1 && base[g * 8 + e] == -INFINITY) {
            if (pos < room) sm.surv_id[pos] = static_cast<int32_t>(col0 + e);
            ++pos;
          }
        }
        done += total;
      }
      nstore = done < room ? done : room;
      __syncthreads();
    }
    const int64_t slot = (lr * a.n_chunks + chunk) * static_cast<int64_t>(k);
    for (int i = tid; i < k; i += kNT) {  // key 0 marks the unused slots for the merge
      a.cand_key[slot + i] = i < cnt ? sm.sel.sel_key[i] : 0u;
      a.cand_id[slot + i] = i < cnt ? sm.sel.sel_id[i] : (i - cnt < nstore ? sm.surv_id[i - cnt] : 0);
    }
    rec.count = cnt;
    rec.ninf = nstore;
  }

  if (tid == 0) a.recs[lr * a.n_chunks + chunk] = rec;
}

template <int LCODE, int MODE, int NG>
void launch_typed(const ScanConfig& cfg, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(cfg.n_chunks), static_cast<unsigned>(cfg.rows));
  chunk_scan_kernel<LCODE, MODE, NG><<<grid, kNT, 0, stream>>>(cfg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int LCODE>
void launch_base(const ScanConfig& cfg, cudaStream_t stream) {
  if (cfg.ng == 1) launch_typed<LCODE, kTopkBase, 1>(cfg, stream);
  else launch_typed<LCODE, kTopkBase, 2>(cfg, stream);
}

}  // namespace

void launch_chunk_scan(const ScanConfig& cfg, cudaStream_t stream) {
  TORCH_CHECK(cfg.mode == kFullGumbel || (cfg.k >= 1 && cfg.k <= kMaxFastK), "chunk scan: k out of range");
  TORCH_CHECK(cfg.rows >= 1 && cfg.rows <= 65535 && cfg.row0 >= 0 && cfg.row0 + cfg.rows <= cfg.B,
              "chunk scan: bad row tile");
  if (cfg.mode == kTopkBase) {
    if (cfg.logits_code == kF32) launch_base<kF32>(cfg, stream);
    else if (cfg.logits_code == kF16) launch_base<kF16>(cfg, stream);
    else launch_base<kBF16>(cfg, stream);
  } else if (cfg.mode == kTopkTilted) {
    // tilted modes read m value rows per column: chunks of 2048 columns (ng = 1) only
    launch_typed<-1, kTopkTilted, 1>(cfg, stream);
  } else {
    launch_typed<-1, kFullGumbel, 1>(cfg, stream);
  }
}

// ------------------------------------------------------------------------------ top-k merge
namespace {

struct MergeSmem {
  MergeSelectSmem<kNT, kMergeCap> ms;
  mavis::LseAcc lse_s[kNT / 32];
  int or_s[kNT / 32];
};

__global__ void __launch_bounds__(kNT)
    topk_merge_kernel(const ScanConfig a, float* cand_logits, int64_t* cand_ids, float* lse, int32_t* n_finite,
                      int32_t* status) {
  __shared__ MergeSmem sm;
  const int tid = threadIdx.x;
  const int64_t lr = blockIdx.x, row = a.row0 + lr;
  const int C = a.n_chunks, k = a.k;
  const ChunkRec* recs = a.recs + lr * C;

  mavis::LseAcc lb = mavis::lse_init();
  int fl = 0;
  for (int c = tid; c < C; c += kNT) {
    const ChunkRec r = recs[c];
    lb = mavis::lse_merge(lb, mavis::LseAcc{r.lse_max, r.lse_sum});
    fl |= r.flags;
  }
  lb = block_lse<kNT>(lb, sm.lse_s);
  fl = block_or<kNT>(fl, sm.or_s);
  int err = fl & kLogitsErrors;
  if (!(fl & kHasFinite)) err |= kRowNoFinite;
  float* out_l = cand_logits + row * k;
  int64_t* out_i = cand_ids + row * k;
  if (err) {
    for (int j = tid; j < k; j += kNT) {
      out_l[j] = NAN;
      out_i[j] = -1;
    }
    if (tid == 0) {
      lse[row] = NAN;
      if (n_finite) n_finite[row] = 0;
      status[row] = err;
    }
    return;
  }
  const int64_t base_slot = lr * static_cast<int64_t>(C) * k;
  const int cnt = merge_select<kNT, kMergeCap>(a.cand_key + base_slot, a.cand_id + base_slot, C * k, k, sm.ms);
  for (int j = tid; j < cnt; j += kNT) {
    out_l[j] = mavis::ordered_to_float(sm.ms.sel.sel_key[j]);
    out_i[j] = sm.ms.sel.sel_id[j];
  }
  if (cnt < k) {
    // Fewer than k finite entries: the reference's stable sort puts the -inf columns next, in
    // column order. Every chunk has fewer than k finite entries too, so phase 1 stored its first
    // min(#-inf, k - count) >= min(#-inf, k - cnt) -inf columns after its candidates: walk the
    // chunks in order (one thread per chunk, 256 at a time) and place them. A chunk whose list was
    // cut short already fills every remaining position, so the positions below are exact.
    int filled = cnt;  // block-uniform
    for (int cb = 0; cb < C && filled < k; cb += kNT) {
      const int c = cb + tid;
      const int n_c = c < C ? recs[c].ninf : 0;
      int total;
      const int before = block_exclusive_scan<kNT>(n_c, sm.or_s, &total);
      if (n_c > 0) {
        const int count_c = recs[c].count;
        const int32_t* ids_c = a.cand_id + base_slot + static_cast<int64_t>(c) * k + count_c;
        for (int i = 0; i < n_c; ++i) {
          const int pos = filled + before + i;
          if (pos >= k) break;
          out_l[pos] = -INFINITY;
          out_i[pos] = ids_c[i];
        }
      }
      filled += total;
    }
  }
  if (tid == 0) {
    lse[row] = mavis::lse_value(lb);
    if (n_finite) n_finite[row] = cnt;
    status[row] = 0;
  }
}

}  // namespace

void launch_topk_merge(const ScanConfig& cfg, float* cand_logits, int64_t* cand_ids, float* lse, int32_t* n_finite,
                       int32_t* status, cudaStream_t stream) {
  TORCH_CHECK(cfg.mode == kTopkBase && cfg.want_ninf, "topk merge: phase 1 must run in kTopkBase with want_ninf");
  topk_merge_kernel<<<static_cast<unsigned>(cfg.rows), kNT, 0, stream>>>(cfg, cand_logits, cand_ids, lse, n_finite,
                                                                          status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace mavis_cuda
