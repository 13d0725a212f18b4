// Host side of the split-vocabulary phase 1: chunk sizing, row tiles and the workspace (caching
// allocator).
#pragma once

#include "chunk_scan.cuh"
#include "host_common.cuh"

namespace mavis_cuda {

// Records and candidates of one launch (one row tile). No memset needed: phase 1 writes every
// record and all k candidate slots of every chunk of the tile.
struct ScanWorkspace {
  at::Tensor buf;
};

// Chooses the chunk size (cfg.ng, cfg.n_chunks) for the batch shape (cfg.B, cfg.N), the number of
// rows per launch (returned) and allocates a workspace for one launch of that many rows. The
// caller runs phase 1 and phase 2 per row tile (for_each_row_tile), setting cfg.row0 / cfg.rows;
// consecutive tiles reuse the workspace (stream order makes that safe).
// Limits: rows per launch <= 65535 (grid y) and workspace <= kMaxWorkspaceBytes (64 MiB) unless a
// single row needs more (k = 256 and V > 16M columns).
inline int64_t plan_scan(ScanConfig& cfg, const at::Tensor& like, ScanWorkspace& ws) {
  TORCH_CHECK(cfg.N < (int64_t{1} << 31), "logits: at most 2^31 - 1 columns are supported, got ", cfg.N);
  if (cfg.mode == kTopkBase) {
    // 4096-column chunks, or 2048 when that would not give two blocks per SM
    const int sms = num_sms(like.get_device());
    const int64_t big = (cfg.N + chunk_cols(2) - 1) / chunk_cols(2);
    cfg.ng = (cfg.B * big < 2 * sms) ? 1 : 2;
  } else {
    cfg.ng = 1;
  }
  const int64_t C = (cfg.N + chunk_cols(cfg.ng) - 1) / chunk_cols(cfg.ng);
  cfg.n_chunks = static_cast<int>(C);
  const int64_t k = cfg.mode == kFullGumbel ? 0 : cfg.k;
  const int64_t row_bytes = C * (static_cast<int64_t>(sizeof(ChunkRec)) + 8 * k);
  int64_t rows = kMaxWorkspaceBytes / row_bytes;
  rows = rows < 1 ? 1 : (rows > kMaxGridY ? kMaxGridY : rows);
  rows = rows < cfg.B ? rows : cfg.B;
  const int64_t rec_bytes = rows * C * static_cast<int64_t>(sizeof(ChunkRec));
  const int64_t cand_bytes = rows * C * k * 4;
  ws.buf = at::empty({rec_bytes + 2 * cand_bytes + 64}, like.options().dtype(at::kByte));
  auto* p = static_cast<uint8_t*>(ws.buf.data_ptr());  // caching-allocator blocks are 512-byte aligned
  cfg.recs = reinterpret_cast<ChunkRec*>(p);
  cfg.cand_key = reinterpret_cast<uint32_t*>(p + rec_bytes);
  cfg.cand_id = reinterpret_cast<int32_t*>(p + rec_bytes + cand_bytes);
  return rows;
}

// The logits (and values) fields of cfg: pointers, dtypes, row strides, vector-load eligibility.
// logits: [B, N] with contiguous columns; values: [B, m, N] with contiguous columns or undefined.
inline void set_scan_inputs(ScanConfig& cfg, const at::Tensor& logits, const at::Tensor& values,
                            const at::Tensor& weights) {
  cfg.logits = logits.data_ptr();
  cfg.logits_code = dtype_code(logits.scalar_type());
  cfg.ld_logits = logits.stride(0);
  cfg.vec_logits = rows_vec_aligned(logits);
  cfg.B = logits.size(0);
  cfg.N = logits.size(1);
  if (values.defined()) {
    cfg.values = values.data_ptr();
    cfg.values_code = dtype_code(values.scalar_type());
    cfg.vs_b = values.stride(0);
    cfg.vs_m = values.stride(1);
    cfg.vec_values = rows_vec_aligned(values);
    cfg.weights = weights.data_ptr<float>();
    cfg.w_per_row = weights.dim() == 2;
    cfg.m = static_cast<int>(values.size(1));
  }
}

}  // namespace mavis_cuda
