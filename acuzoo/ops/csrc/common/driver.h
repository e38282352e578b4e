// Runs a kernel by name. Each backend registers a table of its named kernels; the ops'
// device implementations look the name up here, check that the kernel serves the call,
// label the run for the profiler and answer an empty batch themselves. Nothing here
// chooses a kernel: the caller names it (acuzoo/ops/plan.py).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "geometry.h"

namespace acu {

// (grad_input, grad_weight, grad_positions); a gradient not asked for is undefined.
using Gradients = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// A kernel's two directions. They get weight and bias in the input's dtype and positions in
// its math type, all contiguous, and input and grad_out in whichever memory format the
// caller passed (each kernel takes the layout it works in); the driver gives the output and
// the input gradient the input's memory format.
using ForwardKernel = at::Tensor (*)(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                     const std::optional<at::Tensor>& bias, const Geometry& g);
using BackwardKernel = Gradients (*)(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                     const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask);
// Why a kernel cannot serve a call of this geometry, or "" when it can.
using Refusal = std::string (*)(const Geometry& g);

struct Kernel {
  std::string name;         // "<device>.<what it is>", e.g. "cpu.depthwise_blocks"
  Refusal refuses;          // null: serves every geometry
  ForwardKernel forward;
  BackwardKernel backward;  // null: a forward-only kernel
};

// One backend's kernels, listed by native_kernels() in this order.
struct KernelTable {
  c10::DeviceType device;
  std::vector<Kernel> kernels;
};

// Adds a backend's table; its registration file calls this once, while the library loads.
bool register_kernels(const KernelTable& table);

// Every registered kernel's name: the CPU's table, then the CUDA one's.
std::vector<std::string> native_kernels();

// Refusals shared by several backends' tables.
std::string unless_depthwise(const Geometry& g);
std::string if_depthwise(const Geometry& g);

// The operands as kernels take them: weight and bias in the input's dtype, positions in its
// math type (float for 16-bit inputs), all contiguous.
struct Operands {
  at::Tensor weight, positions;
  std::optional<at::Tensor> bias;
};
Operands operands_for(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                      const std::optional<at::Tensor>& bias);

// A backward's gradients as the op returns them: the input gradient in the input's memory
// format, the others in their parameters' dtypes, and an empty tensor for each one not
// asked for (the schema returns three Tensors).
Gradients op_gradients(const Gradients& grads, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& positions);

// The ops on one device, running the named kernel.
at::Tensor run_forward(c10::DeviceType device, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& positions, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       int64_t groups, c10::string_view kernel);
Gradients run_backward(c10::DeviceType device, const at::Tensor& grad_out, const at::Tensor& input,
                       const at::Tensor& weight, const at::Tensor& positions, at::IntArrayRef stride, int64_t groups,
                       std::array<bool, 3> mask, c10::string_view kernel);

}  // namespace acu
