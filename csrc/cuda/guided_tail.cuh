// Last step of guided_sample on CUDA (guided_tail.cu): per row, t = cand + beta * comb over the
// finite candidates, nucleus, Gumbel-max with the candidate position as noise column,
// logp_base = cand - lse.
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

struct GuidedTailArgs {
  const float* cand_logits;  // [B, K]
  const int64_t* cand_ids;   // [B, K]
  const float* lse;          // [B]
  const int32_t* n_finite;   // [B]
  const int32_t* status_in;  // [B] from the merge
  const float* comb;         // [B, K]
  const float* weights;
  bool w_per_row;
  int m, K;
  float beta;
  double top_p;  // compared in double, as on the CPU
  NoiseParams noise;
  int64_t* out_ids;
  float* out_lt;
  float* out_lb;
  int32_t* status;
};

void launch_guided_tail(const GuidedTailArgs& a, int64_t B, cudaStream_t stream);

}  // namespace mavis_cuda
