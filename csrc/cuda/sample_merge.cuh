// Phase 2 of tilted_sample (sample_merge.cu): one 256-thread block per row merges the chunk
// records of phase 1, selects the keep set, applies the nucleus and draws.
#pragma once

#include "chunk_scan.cuh"

namespace mavis_cuda {

struct SampleArgs {
  ScanConfig s;   // the rows [s.row0, s.row0 + s.rows) of this launch
  double top_p;   // compared in double, as on the CPU
  const int64_t* cand_map;  // candidate_ids [B, N] or nullptr
  int64_t* out_ids;
  float* out_lt;
  float* out_lb;
  int32_t* status;
};

void launch_sample_merge(const SampleArgs& a, cudaStream_t stream);

}  // namespace mavis_cuda
