// tilt_logits on the CPU: logits / temperature + beta * sum_i w[b,i] * values[b,i,:], blockwise per
// row, in the float-operation order of reference.tilt_logits (so results match it bit for bit).
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "op_checks.h"
#include "row_scan.h"

namespace mavis {
namespace cpu {

void check_values(const at::Tensor& values, const at::Tensor& logits) {
  check_float(values, "values");
  check_dim(values, 3, "values");
  check_same_device(values, logits, "values");
  TORCH_CHECK(values.size(0) == logits.size(0) && values.size(2) == logits.size(1) && values.size(1) > 0,
              "values: expected shape [B=", logits.size(0), ", m, N=", logits.size(1), "] with m > 0, got ",
              values.sizes());
}

at::Tensor tilt_logits(const at::Tensor& logits, const at::Tensor& values, const at::Tensor& weights, double beta,
                       double temperature) {
  check_logits(logits);
  check_temperature(temperature);
  check_values(values, logits);
  const int64_t B = logits.size(0), N = logits.size(1);
  check_weights(weights, B, values.size(1), logits);
  TORCH_CHECK(std::isfinite(beta), "beta: must be finite, got ", beta);
  const at::Tensor w = checked_weights(weights);
  at::Tensor out = at::empty({B, N}, logits.options().dtype(at::kFloat));
  float* out_p = out.data_ptr<float>();
  const float temp = static_cast<float>(temperature), beta_f = static_cast<float>(beta);

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s(kBlock), tmp(kBlock);
    for (int64_t b = b0; b < b1; ++b) {
      const LogitsRow row(logits, b, temp);
      const ValuesRow vrow(values, b, weight_row(w, b), beta_f);
      for (int64_t c0 = 0; c0 < N; c0 += kBlock) {
        const int64_t n = std::min(kBlock, N - c0);
        // No data checks here: tilt_logits is plain arithmetic (NaN in, NaN out), like the reference.
        load_block(row.data, row.st, row.start + c0 * row.stride, row.stride, n, s.data());
        divide_block(s.data(), n, temp);
        float* o = out_p + b * N + c0;
        vrow.combine(c0, n, o, tmp.data());
        tilt_plain(s.data(), o, n, beta_f);
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace mavis
