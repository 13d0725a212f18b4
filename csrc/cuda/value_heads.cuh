// Value-head GEMVs, one warp per output position (see value_heads.cu).
#pragma once

#include "device_common.cuh"

namespace mavis_cuda {

// Prefix mode: positions (b, n) of hidden [B, P=N, d], heads W [m, d], bias [m] (V = 1).
// Q-head mode: positions (b, j) of cand [B, P=K], hidden [B, d], heads W [m, V, d], bias [m, V];
// only the K candidate rows of each head are read. With weights ([m] / [B, m] float32) out is
// [B, P] = sum_i w_i * value_i, else [B, m, P]. status (int32 [1], zeroed) may be nullptr; it
// receives kCandOutOfRange / kWeightsBad by atomicOr.
// hidden, W and bias are read through their strides (in elements; any layout, no copy: a head
// weight of [m, V, d] can be gigabytes); cand, weights and out are contiguous.
struct HeadArgs {
  const void* hidden;
  int hidden_code;
  int64_t h_sb, h_sn, h_sd;  // hidden strides: row, position (prefix mode; 0 in Q-head mode), element
  const void* weight;
  int weight_code;
  int64_t w_sm, w_sv, w_sd;  // W strides: head, vocabulary row (Q-head mode; 0 in prefix mode), element
  const void* bias;  // nullptr: no bias
  int bias_code;
  int64_t b_sm, b_sv;  // bias strides: head, vocabulary row (Q-head mode; 0 in prefix mode)
  const int64_t* cand;  // Q-head mode
  const float* weights;  // nullptr: per-head output
  bool w_per_row;
  int64_t B, P;  // rows, positions per row (N or K)
  int m;
  int64_t V, d;
  // 16-byte loads: h_sd == w_sd == 1 and every row of hidden and W starts 16-byte aligned.
  bool vec;
  float* out;
  int32_t* status;
};

void launch_heads(const HeadArgs& a, bool qhead, cudaStream_t stream);

}  // namespace mavis_cuda
