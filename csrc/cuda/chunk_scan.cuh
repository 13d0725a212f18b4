// Phase 1 of the split-vocabulary kernels (tilted_sample, topk_candidates, guided_sample): each
// row's vocabulary is cut into chunks of 2048 or 4096 columns, one 256-thread block per (chunk,
// row), so that even B = 1 puts ~30-60 blocks on the GPU. One pass over the chunk computes, in
// registers, the scaled logits (and the tilt when the mode needs it) and leaves a ChunkRec:
//   * running logsumexp (max, sum) of logits / T over the finite entries (for logp_base / lse);
//   * flags: NaN, +inf, "has a finite entry", non-finite tilted score where the logit is finite;
//   * top-k modes: the chunk's exact top-k (key desc, id asc), sorted, in the candidate workspace;
//   * full-vocab mode: Gumbel-max winner (t + g, lower column on ties) and logsumexp of t.
// Phase 2 (one block per row) merges the C records of a row; see sample_merge.cu and
// topk_merge_kernel below (chunk_scan.cu).
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

enum ScanMode : int {
  kTopkBase = 0,    // top-k of logits / T; values are not read in phase 1
  kTopkTilted = 1,  // top-k of the tilted scores
  kFullGumbel = 2,  // no top-k: Gumbel-max over every column
};

constexpr int kHasFinite = 1 << 8;  // ChunkRec::flags bit (not an error)

// Merge phase: how many surviving candidates a row stages in shared memory (see merge_select).
constexpr int kMergeCap = 2048;

// Upper bound of the phase-1 workspace of one launch (records + candidate keys/ids): larger batches
// are processed in row tiles that reuse it (host_scan.cuh). 64 MiB holds e.g. 250 rows of
// V = 262144 with k = 256 (the worst case: 268 KiB per row), or every row of B = 1024, V = 128256,
// k = 40.
constexpr int64_t kMaxWorkspaceBytes = int64_t{64} << 20;

struct alignas(16) ChunkRec {
  double best_score;       // Gumbel-max winner (kFullGumbel): (double)t + noise
  int64_t best_col;        // -1: none
  float lse_max, lse_sum;  // logits / T, finite entries
  float t_max, t_sum;      // tilted scores, finite entries (kFullGumbel)
  float best_t;
  int flags;               // StatusBits | kHasFinite
  int count;               // candidates written (top-k modes): min(k, finite entries of the chunk)
  int ninf;                // want_ninf: ids of the chunk's first `ninf` -inf columns follow the
                           // candidates in slots [count, count + ninf)
};

// One launch covers the rows [row0, row0 + rows) of the batch (at most 65535, the grid's y limit,
// and few enough that the workspace stays under kMaxWorkspaceBytes); the workspace is indexed by
// the row inside the launch, everything else (noise, inputs, outputs) by the absolute row.
struct ScanConfig {
  const void* logits = nullptr;
  int logits_code = kF32;
  int64_t ld_logits = 0;  // elements between rows (columns are contiguous)
  bool vec_logits = false;
  const void* values = nullptr;  // [B, m, N] (columns contiguous) or nullptr
  int values_code = kF32;
  int64_t vs_b = 0, vs_m = 0;    // element strides of values' first two dimensions
  bool vec_values = false;
  const float* weights = nullptr;  // [m] or [B, m] float32, contiguous
  bool w_per_row = false;
  int m = 0;
  int64_t B = 0, N = 0;
  int64_t row0 = 0, rows = 0;
  float temperature = 1.0f, beta = 0.0f;
  int k = 0;
  int mode = kTopkBase;
  bool want_ninf = false;  // kTopkBase: record the first -inf columns of chunks with < k finite
  int ng = 2;  // granules of 8 columns per thread: chunk = 256 * 8 * ng columns
  int n_chunks = 0;
  NoiseParams noise{};
  ChunkRec* recs = nullptr;      // [rows, n_chunks]
  uint32_t* cand_key = nullptr;  // [rows, n_chunks, k]; key 0 = empty slot
  int32_t* cand_id = nullptr;    // [rows, n_chunks, k]
};

inline int64_t chunk_cols(int ng) { return 256LL * 8 * ng; }

// Sizing of the launch (chunks, workspace) is done on the host (ops_cuda.cu: plan_scan).

// Launches phase 1 on `stream` (checks the launch).
void launch_chunk_scan(const ScanConfig& cfg, cudaStream_t stream);

// Phase 2 for topk_candidates and guided_sample: merges a row's chunk candidates into the sorted
// top-k (filling with the lowest-id -inf columns when a row has fewer than k finite entries, as
// the reference's stable sort does; phase 1 must run with want_ninf), the full-row lse, the
// number of finite candidates and the status word. On a logits error the row gets ids -1, NaN
// logits and NaN lse. Outputs are indexed by the absolute row.
void launch_topk_merge(const ScanConfig& cfg, float* cand_logits, int64_t* cand_ids, float* lse, int32_t* n_finite,
                       int32_t* status, cudaStream_t stream);

}  // namespace mavis_cuda
