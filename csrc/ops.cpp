// Every schema of the mavis op library, defined once. Kernels register per backend in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake kernels live in mavis_ext/_fake.py.
//
// The Python module mavis_ext._C is an empty extension module: importing it loads this shared
// library, whose static initialisers register the ops (extension-cpp style, no pybind).
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mavis, m) {
  // -> (cand_logits [B,k] f32, cand_ids [B,k] i64, lse [B] f32), of logits / temperature.
  m.def("topk_candidates(Tensor logits, int k, float temperature, bool mark_invalid=False) -> (Tensor, Tensor, Tensor)");
  // prefix mode: hidden [B,N,d], head_weight [m,d], head_bias [m]; Q-head mode: hidden [B,d],
  // head_weight [m,V,d], head_bias [m,V], candidate_ids [B,K] i64. weights f32 [m] or [B,m].
  // -> f32 [B,m,N] (or [B,N] when weights is given).
  m.def(
      "value_heads(Tensor hidden, Tensor head_weight, Tensor? head_bias, Tensor? candidate_ids, "
      "Tensor? weights) -> Tensor");
  // logits [B,N], values [B,m,N], weights f32 [m] or [B,m] -> f32 [B,N].
  m.def("tilt_logits(Tensor logits, Tensor values, Tensor weights, float beta, float temperature) -> Tensor");
  // seed/offset: int64 [1] (one stream, row index in the counter) or [B] (one stream per row).
  // -> (ids [B] i64, logp_tilted [B] f32, logp_base [B] f32).
  m.def(
      "tilted_sample(Tensor logits, Tensor? values, Tensor? weights, float beta, float temperature, "
      "int top_k, float top_p, bool topk_on_tilted, Tensor? candidate_ids, Tensor seed, Tensor offset, "
      "bool mark_invalid=False) "
      "-> (Tensor, Tensor, Tensor)");
  // logits [B,V], hidden [B,d], head_weight [m,V,d], head_bias [m,V]; logp_base over the full V.
  m.def(
      "guided_sample(Tensor logits, Tensor hidden, Tensor head_weight, Tensor? head_bias, Tensor weights, "
      "float beta, int top_k, float temperature, float top_p, Tensor seed, Tensor offset, bool mark_invalid=False) "
      "-> (Tensor, Tensor, Tensor)");
}
