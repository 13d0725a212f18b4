// CPU kernels of every mavis op (schemas in csrc/ops.cpp).
#include <torch/library.h>

#include "kernels.h"

TORCH_LIBRARY_IMPL(mavis, CPU, m) {
  m.impl("topk_candidates", &mavis::cpu::topk_candidates);
  m.impl("value_heads", &mavis::cpu::value_heads);
  m.impl("tilt_logits", &mavis::cpu::tilt_logits);
  m.impl("tilted_sample", &mavis::cpu::tilted_sample);
  m.impl("guided_sample", &mavis::cpu::guided_sample);
}
