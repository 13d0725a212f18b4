// Gumbel-max over the kept columns of a row (masked_sample.cu), for the slow paths.
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

// One launch covers `rows` consecutive rows of the batch (a row tile of the slow paths); every
// pointer below points at the tile's first row, and noise_row0 is the batch row of that first row
// (the noise counter needs the batch row). t, base: float32 [rows, N]; keep: bool [rows, N];
// logp_base = base[tok] - lse(base row), or base[tok] - lse_override[row] when given. status_in:
// errors found so far (per row); status_out gets them, or kRowNoFinite when nothing is kept.
struct MaskedSampleArgs {
  const float* t;
  const float* base;
  const bool* keep;
  int64_t rows, N;
  int64_t noise_row0;
  NoiseParams noise;
  const int64_t* cand_map;  // [B, N] or nullptr
  const float* lse_override;
  const int32_t* status_in;
  int64_t* out_ids;
  float* out_lt;
  float* out_lb;
  int32_t* status_out;
};

void launch_masked_sample(const MaskedSampleArgs& a, cudaStream_t stream);

}  // namespace mavis_cuda
