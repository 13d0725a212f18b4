// Host side of the split-vocabulary phase 1: chunk sizing and the workspace (caching allocator).
#pragma once

#include "chunk_scan.cuh"
#include "host_common.cuh"

namespace mavis_cuda {

// Records and candidates of one launch. No memset needed: phase 1 writes every record and all k
// candidate slots of every chunk.
struct ScanWorkspace {
  at::Tensor buf;
};

// Chooses the chunk size (cfg.ng, cfg.n_chunks) for the row shape and allocates the workspace.
inline ScanWorkspace plan_scan(ScanConfig& cfg, const at::Tensor& like) {
  TORCH_CHECK(cfg.N < (int64_t{1} << 31), "logits: at most 2^31 - 1 columns are supported, got ", cfg.N);
  TORCH_CHECK(cfg.B <= 65535, "logits: the CUDA kernels support at most 65535 rows, got ", cfg.B);
  if (cfg.mode == kTopkBase) {
    // 4096-column chunks, or 2048 when that would not give two blocks per SM
    const int sms = num_sms(like.get_device());
    const int64_t big = (cfg.N + chunk_cols(2) - 1) / chunk_cols(2);
    cfg.ng = (cfg.B * big < 2 * sms) ? 1 : 2;
  } else {
    cfg.ng = 1;
  }
  const int64_t C = (cfg.N + chunk_cols(cfg.ng) - 1) / chunk_cols(cfg.ng);
  TORCH_CHECK(C <= (int64_t{1} << 20), "logits: row too long for the split-vocabulary kernels");
  cfg.n_chunks = static_cast<int>(C);
  const int64_t n_rec = cfg.B * C;
  const int64_t k = cfg.mode == kFullGumbel ? 0 : cfg.k;
  const int64_t rec_bytes = n_rec * static_cast<int64_t>(sizeof(ChunkRec));
  const int64_t cand_bytes = n_rec * k * 4;
  ScanWorkspace ws;
  ws.buf = at::empty({rec_bytes + 2 * cand_bytes + 64}, like.options().dtype(at::kByte));
  auto* p = static_cast<uint8_t*>(ws.buf.data_ptr());
  cfg.recs = reinterpret_cast<ChunkRec*>(p);
  cfg.cand_key = reinterpret_cast<uint32_t*>(p + rec_bytes);
  cfg.cand_id = reinterpret_cast<int32_t*>(p + rec_bytes + cand_bytes);
  return ws;
}

}  // namespace mavis_cuda
