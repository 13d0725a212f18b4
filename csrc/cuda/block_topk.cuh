// Block-level exact top-k over ordered float keys (mavis/ordered_key.h), with the contract's tie
// rule: larger key first, then the lower id.
//
//   radix_kth    : k-th largest key among n entries, 4 passes of 8-bit digits. Histograms are
//                  built with warp-aggregated shared atomics (__match_any_sync), so the heavy
//                  contention of the top digits (all logits share a few exponents) costs one
//                  atomic per distinct digit per warp.
//   select_topk  : radix_kth on the keys, then (only when the k-th key is tied) radix_kth on the
//                  complemented ids among the tied entries, compaction of exactly min(k, n)
//                  entries, and a rank sort (O(k^2 / NT), k <= 256) so the output is ordered.
//
// Entries are produced by a functor get(i, key, id) -> bool (false: entry i is absent), so the same
// code selects from shared memory (per-chunk survivors) and from global workspace (merge phase).
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

template <int NT>
struct SelectSmem {
  static_assert(NT >= kMaxFastK && NT % 32 == 0, "select_topk: one selected entry per thread");
  unsigned hist[256];
  uint32_t sel_key[kMaxFastK];
  int32_t sel_id[kMaxFastK];
  uint32_t stage_key[NT];  // small inputs (n <= NT): ranked directly
  int32_t stage_id[NT];
  unsigned char stage_ok[NT];
  int sel_n;
  unsigned r_digit, r_above, r_cnt;
};

// k-th largest key (1 <= k <= number of present entries). Returns the key (kth), how many present
// keys are strictly larger (gt) and how many equal it (eq). Every thread gets the results.
template <int NT, typename Get>
__device__ void radix_kth(int n, int k, Get get, SelectSmem<NT>& sh, uint32_t& kth, int& gt, int& eq) {
  const int tid = threadIdx.x, lane = tid & 31;
  uint32_t prefix = 0, mask = 0;
  unsigned kk = static_cast<unsigned>(k), above_acc = 0, cnt = 0;
#pragma unroll 1
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += NT) sh.hist[i] = 0;
    __syncthreads();
#pragma unroll 1
    for (int base = 0; base < n; base += NT) {  // uniform trip count: every lane reaches the match
      const int i = base + tid;
      uint32_t key = 0;
      int32_t id = 0;
      const bool ok = (i < n) && get(i, key, id) && ((key & mask) == prefix);
      const unsigned digit = ok ? ((key >> shift) & 255u) : 256u;
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      if (ok && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[digit], static_cast<unsigned>(__popc(peers)));
    }
    __syncthreads();
    if (tid < 32) {
      // lane owns digits 255-8*lane-j (j = 0..7), i.e. the histogram read from the top down
      unsigned c[8], s = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c[j] = sh.hist[255 - 8 * lane - j];
        s += c[j];
      }
      unsigned incl = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      unsigned run = incl - s;  // entries whose digit is above this lane's first digit
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (run < kk && kk <= run + c[j]) {
          sh.r_digit = 255u - 8u * lane - j;
          sh.r_above = run;
          sh.r_cnt = c[j];
        }
        run += c[j];
      }
    }
    __syncthreads();
    const unsigned d = sh.r_digit, above = sh.r_above;
    cnt = sh.r_cnt;
    prefix |= d << shift;
    mask |= 255u << shift;
    kk -= above;
    above_acc += above;
    // sh.r_* are rewritten only after the next pass's two barriers; sh.hist is re-zeroed after
    // warp 0 finished reading it (the barrier above).
  }
  kth = prefix;
  gt = static_cast<int>(above_acc);
  eq = static_cast<int>(cnt);
}

// Rank sort of sh.sel_key/sel_id[0, n) in place (n <= kMaxFastK <= NT): larger key first, lower id
// breaks ties. Ids are distinct, so ranks are a permutation.
template <int NT>
__device__ void rank_sort_selected(int n, SelectSmem<NT>& sh) {
  const int tid = threadIdx.x;
  uint32_t my_key = 0;
  int32_t my_id = 0;
  int rank = 0;
  if (tid < n) {
    my_key = sh.sel_key[tid];
    my_id = sh.sel_id[tid];
    for (int f = 0; f < n; ++f) {
      const uint32_t kf = sh.sel_key[f];
      const int32_t idf = sh.sel_id[f];
      rank += (kf > my_key || (kf == my_key && idf < my_id)) ? 1 : 0;
    }
  }
  __syncthreads();
  if (tid < n) {
    sh.sel_key[rank] = my_key;
    sh.sel_id[rank] = my_id;
  }
  __syncthreads();
}

// Exact top-k (k <= kMaxFastK) of the present entries among [0, n). The result, sorted, is left in
// sh.sel_key / sh.sel_id[0, return value); the return value is min(k, number present).
template <int NT, typename Get>
__device__ int select_topk(int n, int k, Get get, SelectSmem<NT>& sh) {
  const int tid = threadIdx.x;
  if (n <= NT) {
    // Small input (the usual case after filtering): every entry computes its rank among all
    // present entries directly, O(n) per thread, and lands at that rank if it is below k.
    uint32_t my_key = 0;
    int32_t my_id = 0;
    const bool mine = tid < n && get(tid, my_key, my_id);
    sh.stage_key[tid] = my_key;
    sh.stage_id[tid] = my_id;
    sh.stage_ok[tid] = mine ? 1 : 0;
    const int present = __syncthreads_count(mine);
    int rank = 0;
    if (mine) {
      for (int f = 0; f < n; ++f) {
        const uint32_t kf = sh.stage_key[f];
        const int32_t idf = sh.stage_id[f];
        rank += (sh.stage_ok[f] && (kf > my_key || (kf == my_key && idf < my_id))) ? 1 : 0;
      }
      if (rank < k) {
        sh.sel_key[rank] = my_key;
        sh.sel_id[rank] = my_id;
      }
    }
    __syncthreads();
    return present < k ? present : k;
  }
  // number of present entries
  int present = 0;
#pragma unroll 1
  for (int base = 0; base < n; base += NT) {
    const int i = base + tid;
    uint32_t key;
    int32_t id;
    present += __syncthreads_count((i < n) && get(i, key, id));
  }
  if (tid == 0) sh.sel_n = 0;
  __syncthreads();
  if (present <= k) {
#pragma unroll 1
    for (int i = tid; i < n; i += NT) {
      uint32_t key;
      int32_t id;
      if (get(i, key, id)) {
        const int pos = atomicAdd(&sh.sel_n, 1);
        sh.sel_key[pos] = key;
        sh.sel_id[pos] = id;
      }
    }
    __syncthreads();
    rank_sort_selected<NT>(present, sh);
    return present;
  }
  uint32_t kth;
  int gt, eq;
  radix_kth<NT>(n, k, get, sh, kth, gt, eq);
  const int need_eq = k - gt;  // tied entries to take, 1 <= need_eq <= eq
  uint32_t id_cut = 0;         // take tied entries whose complemented id >= id_cut (lowest ids)
  if (need_eq < eq) {
    auto get_tied = [&](int i, uint32_t& key, int32_t& id) -> bool {
      uint32_t kk;
      int32_t ii;
      if (!get(i, kk, ii) || kk != kth) return false;
      key = ~static_cast<uint32_t>(ii);
      id = ii;
      return true;
    };
    int gt2, eq2;
    radix_kth<NT>(n, need_eq, get_tied, sh, id_cut, gt2, eq2);
  }
  __syncthreads();
#pragma unroll 1
  for (int i = tid; i < n; i += NT) {
    uint32_t key;
    int32_t id;
    if (get(i, key, id) && (key > kth || (key == kth && ~static_cast<uint32_t>(id) >= id_cut))) {
      const int pos = atomicAdd(&sh.sel_n, 1);
      if (pos < kMaxFastK) {  // exactly k by construction; the guard only protects shared memory
        sh.sel_key[pos] = key;
        sh.sel_id[pos] = id;
      }
    }
  }
  __syncthreads();
  rank_sort_selected<NT>(k, sh);
  return k;
}

}  // namespace mavis_cuda

namespace mavis_cuda {

// Exact top-k of a candidate array in global memory (the merge phase: n = chunks * k slots; key 0
// marks an empty slot). Same filter as phase 1: every thread takes the maximum of its slots (the
// loads of a thread are independent, so they overlap), tau = k-th largest of those maxima bounds
// the k-th largest key from below, and only slots >= tau (typically ~k of them) are staged in
// shared memory for select_topk. If ties push the survivors past the staging capacity, select_topk
// runs on the global array directly (slower, same result).
template <int NT, int CAP>
struct MergeSelectSmem {
  SelectSmem<NT> sel;
  uint32_t tmax[NT];
  uint32_t surv_key[CAP];
  int32_t surv_id[CAP];
  int ns;
};

template <int NT, int CAP>
__device__ int merge_select(const uint32_t* __restrict__ keys, const int32_t* __restrict__ ids, int n, int k,
                            MergeSelectSmem<NT, CAP>& sm) {
  const int tid = threadIdx.x;
  uint32_t my_max = 0;
#pragma unroll 4
  for (int i = tid; i < n; i += NT) {
    const uint32_t kk = keys[i];
    my_max = kk > my_max ? kk : my_max;
  }
  sm.tmax[tid] = my_max;
  if (tid == 0) sm.ns = 0;
  __syncthreads();
  uint32_t tau;
  int gt, eq;
  radix_kth<NT>(
      NT, k < NT ? k : NT,
      [&](int i, uint32_t& kk, int32_t& id) {
        kk = sm.tmax[i];
        id = i;
        return true;
      },
      sm.sel, tau, gt, eq);
  const uint32_t thr = tau > 1u ? tau : 1u;
#pragma unroll 4
  for (int i = tid; i < n; i += NT) {
    const uint32_t kk = keys[i];
    if (kk >= thr) {
      const int pos = atomicAdd(&sm.ns, 1);
      if (pos < CAP) {
        sm.surv_key[pos] = kk;
        sm.surv_id[pos] = ids[i];
      }
    }
  }
  __syncthreads();
  const int ns = sm.ns;
  if (ns <= CAP) {
    return select_topk<NT>(
        ns, k,
        [&](int i, uint32_t& kk, int32_t& id) {
          kk = sm.surv_key[i];
          id = sm.surv_id[i];
          return true;
        },
        sm.sel);
  }
  return select_topk<NT>(
      n, k,
      [&](int i, uint32_t& kk, int32_t& id) {
        kk = keys[i];
        id = ids[i];
        return kk != 0u;
      },
      sm.sel);
}

}  // namespace mavis_cuda
