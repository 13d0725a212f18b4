// The CUDA entry points of the five mavis ops, registered for the CUDA dispatch key.
//
// Build-time layout: this is the ONE translation unit that includes ATen (host_*.cuh: argument
// checks, allocation, launches, status checks, ATen slow paths). The kernels live in light
// translation units (chunk_scan.cu, sample_merge.cu, guided_tail.cu, value_heads.cu,
// tilt_logits.cu, masked_sample.cu) behind plain-struct launchers, so nvcc parses the ATen headers
// once per architecture instead of once per kernel file.
#include "host_guided_sample.cuh"
#include "host_tilt.cuh"
#include "host_tilted_sample.cuh"
#include "host_topk_candidates.cuh"
#include "host_value_heads.cuh"

TORCH_LIBRARY_IMPL(mavis, CUDA, m) {
  m.impl("topk_candidates", &mavis_cuda::topk_candidates_cuda);
  m.impl("value_heads", &mavis_cuda::value_heads_cuda);
  m.impl("tilt_logits", &mavis_cuda::tilt_logits_cuda);
  m.impl("tilted_sample", &mavis_cuda::tilted_sample_cuda);
  m.impl("guided_sample", &mavis_cuda::guided_sample_cuda);
}
