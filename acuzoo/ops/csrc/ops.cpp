// The ACU's operator schemas. Each device's kernels are registered beside their name table
// (cpu/registration.cpp, cuda/kernels.cu), autograd in autograd.cpp, the fake (meta)
// kernels from Python (acuzoo/ops/native_registration.py).
#include <torch/library.h>

#include "common/driver.h"

TORCH_LIBRARY(acuzoo, m) {
  // Output (N, C_out, (H - 1) // s_h + 1, (W - 1) // s_w + 1); see DESIGN.md for the sampling.
  // forward_kernel runs the forward; backward_kernel is kept for the backward (both names
  // from native_kernels()).
  m.def(
      "active_conv2d(Tensor input, Tensor weight, Tensor positions, Tensor? bias, int[2] stride, int groups, "
      "str forward_kernel, str backward_kernel) -> Tensor");
  // (grad_input, grad_weight, grad_positions) by the named kernel; a gradient not asked for
  // is an empty tensor.
  m.def(
      "active_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor positions, int[2] stride, "
      "int groups, bool[3] output_mask, str kernel) -> (Tensor, Tensor, Tensor)");
  // Every kernel name this library runs, CPU ones first, in a fixed order.
  m.def("native_kernels() -> str[]", &acu::native_kernels);
  // The CUDA kernels' per-element code run on the CPU (cpu/twin.cpp): for tests only.
  m.def(
      "_twin_active_conv2d(Tensor input, Tensor weight, Tensor positions, Tensor? bias, "
      "int[2] stride, int groups) -> Tensor");
  m.def(
      "_twin_active_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor positions, int[2] stride, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
