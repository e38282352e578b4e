// The ACU's operator schemas. Kernels and autograd are registered beside their code
// (acu_cpu.cpp, acu_cuda.cu, acu_autograd.cpp); the fake (meta) kernels from Python
// (acuzoo/ops/native_registration.py).
#include <torch/library.h>

TORCH_LIBRARY(acuzoo, m) {
  // Output (N, C_out, (H - 1) // s_h + 1, (W - 1) // s_w + 1); see DESIGN.md for the sampling.
  m.def(
      "active_conv2d(Tensor input, Tensor weight, Tensor positions, Tensor? bias, "
      "int[2] stride, int groups) -> Tensor");
  // (grad_input, grad_weight, grad_positions); a gradient not asked for is an empty tensor.
  m.def(
      "active_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor positions, "
      "int[2] stride, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The CUDA kernels' per-element code run on the CPU (acu_twin.cpp): for tests only.
  m.def(
      "_twin_active_conv2d(Tensor input, Tensor weight, Tensor positions, Tensor? bias, "
      "int[2] stride, int groups) -> Tensor");
  m.def(
      "_twin_active_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor positions, int[2] stride, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
