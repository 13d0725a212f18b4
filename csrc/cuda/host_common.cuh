// Host-side helpers of the CUDA entry points: ATen, the status check, dtype codes, alignment and
// noise parameters. Included only by ops_cuda.cu (the one translation unit that pays for ATen).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <vector>

#include "device_common.cuh"
#include "op_checks.h"

namespace mavis_cuda {

// MAVIS_CUDA_CHECKS=0 turns the eager status check off (no copy, no sync; bad rows are marked as
// with mark_invalid=True). Read at every call, so a process can change it at run time.
inline bool host_checks_enabled() {
  const char* e = std::getenv("MAVIS_CUDA_CHECKS");
  return !(e != nullptr && e[0] == '0');
}

// True while `stream` is being captured into a CUDA graph. A legacy-stream query that CUDA answers
// with cudaErrorStreamCaptureImplicit (a blocking stream is capturing) counts as capturing.
inline bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &st);
  if (err == cudaErrorStreamCaptureImplicit) {
    (void)cudaGetLastError();  // reset the runtime's last-error state (the error is not sticky)
    return true;
  }
  C10_CUDA_CHECK(err);
  return st != cudaStreamCaptureStatusNone;
}

// Sets this thread's stream-capture interaction mode to "relaxed" for its lifetime. The status
// check below syncs a stream that is NOT capturing; in the default "global" mode CUDA counts such a
// sync as a potentially unsafe call and invalidates a graph capture running on another stream (of
// this or another thread). The sync only waits for our own kernels, so relaxed mode is safe here.
class RelaxedCaptureMode {
 public:
  RelaxedCaptureMode() { C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&prev_)); }
  ~RelaxedCaptureMode() { (void)cudaThreadExchangeStreamCaptureMode(&prev_); }
  RelaxedCaptureMode(const RelaxedCaptureMode&) = delete;
  RelaxedCaptureMode& operator=(const RelaxedCaptureMode&) = delete;

 private:
  cudaStreamCaptureMode prev_ = cudaStreamCaptureModeRelaxed;
};

// Raise the error of highest priority in `bits`, in the order the reference checks them.
inline void raise_status(int bits, const char* values_detail = "NaN or inf in values") {
  TORCH_CHECK(!(bits & kLogitsNaN), "logits: contains NaN");
  TORCH_CHECK(!(bits & kLogitsPosInf), "logits: contains +inf");
  TORCH_CHECK(!(bits & kRowNoFinite), "logits: a row has no finite entry (all -inf)");
  TORCH_CHECK(!(bits & kCandOutOfRange), "candidate_ids: an id is outside [0, V)");
  TORCH_CHECK(!(bits & kWeightsBad), "weights: contains NaN or inf");
  TORCH_CHECK(!(bits & kValuesBad), "values: tilted scores are not finite (", values_detail, ")");
}

// The eager status check of one op call: one small D2H copy of the int32 status words into pinned
// memory and a sync of `stream` (raising needs the answer before the op returns). Skipped, so that
// the call neither copies nor syncs and bad rows stay marked (id -1 / NaN), when
//   * mark_invalid is true (the caller asked for marked rows),
//   * `stream` is being captured into a CUDA graph (a graph cannot raise),
//   * MAVIS_CUDA_CHECKS=0.
inline void check_status(const at::Tensor& status, cudaStream_t stream, bool mark_invalid,
                         const char* values_detail = "NaN or inf in values") {
  if (mark_invalid || !host_checks_enabled() || stream_is_capturing(stream)) return;
  const RelaxedCaptureMode relaxed;
  const int64_t n = status.numel();
  at::Tensor h = at::empty({n}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  // c10's copy-and-sync: torch.cuda.set_sync_debug_mode() and the GPU trace see this sync
  c10::cuda::memcpy_and_sync(h.data_ptr<int32_t>(), status.data_ptr<int32_t>(), n * sizeof(int32_t),
                             cudaMemcpyDeviceToHost, stream);
  const int32_t* p = h.data_ptr<int32_t>();
  int bits = 0;
  for (int64_t i = 0; i < n; ++i) bits |= p[i];
  raise_status(bits, values_detail);
}


inline int dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return kF32;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "expected float32, float16 or bfloat16, got ", st);
  }
  return kF32;
}

inline NoiseParams make_noise(const at::Tensor& seed, const at::Tensor& offset, int64_t B) {
  NoiseParams np;
  np.seed = seed.data_ptr<int64_t>();
  np.offset = offset.data_ptr<int64_t>();
  np.seed_per_row = seed.numel() == B && B > 1;
  np.offset_per_row = offset.numel() == B && B > 1;
  np.row_in_counter = seed.numel() == 1 && offset.numel() == 1;
  return np;
}

inline int num_sms(int device) {
  return at::cuda::getDeviceProperties(device)->multiProcessorCount;
}

// True when t's last dimension is contiguous and every row (every index of the other dimensions)
// starts 16-byte aligned, so the 8-element granules starting at multiples of 8 can be read with
// 16-byte vector loads.
inline bool rows_vec_aligned(const at::Tensor& t) {
  if (t.numel() == 0 || t.stride(-1) != 1) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int64_t i = 0; i + 1 < t.dim(); ++i)
    if (t.size(i) > 1 && (t.stride(i) * static_cast<int64_t>(t.element_size())) % 16 != 0) return false;
  return true;
}

// t itself when its last dimension is contiguous (the kernels take the other strides), else a
// contiguous copy. Keeps e.g. the last-position slice logits[:, -1, :] of a [B, S, V] output copy-free.
inline at::Tensor rows_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// Row tiles [r0, r0 + n) of at most `max_rows` rows (>= 1): the y grid dimension holds at most
// 65535 rows per launch, and tiles bound the size of per-launch temporaries.
template <typename F>
inline void for_each_row_tile(int64_t B, int64_t max_rows, F&& f) {
  const int64_t step = max_rows < 1 ? 1 : max_rows;
  for (int64_t r0 = 0; r0 < B; r0 += step) f(r0, B - r0 < step ? B - r0 : step);
}

constexpr int64_t kMaxGridY = 65535;

inline void check_beta(double beta) { TORCH_CHECK(std::isfinite(beta), "beta: must be finite, got ", beta); }

inline void check_values(const at::Tensor& values, const at::Tensor& logits) {
  mavis::check_float(values, "values");
  mavis::check_dim(values, 3, "values");
  mavis::check_same_device(values, logits, "values");
  TORCH_CHECK(values.size(0) == logits.size(0) && values.size(2) == logits.size(1) && values.size(1) > 0,
              "values: expected shape [B=", logits.size(0), ", m, N=", logits.size(1), "], got ", values.sizes());
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
}

}  // namespace mavis_cuda
