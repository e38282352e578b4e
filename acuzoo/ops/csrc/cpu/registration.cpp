// The CPU kernels by name, and the ops' CPU implementation: run the kernel the caller names.
#include <torch/library.h>

#include <sstream>

#include "kernels.h"

namespace acu {
namespace {

std::string unless_depthwise_stride_one(const Geometry& g) {
  std::string why = unless_depthwise(g);
  if (!why.empty() || (g.stride_h == 1 && g.stride_w == 1)) return why;
  std::ostringstream out;
  out << "serves stride (1, 1) only, got (" << g.stride_h << ", " << g.stride_w << ")";
  return out.str();
}

const KernelTable kCpuKernels{c10::DeviceType::CPU,
                              {
                                  {"cpu.depthwise_planes", unless_depthwise, cpu::depthwise_planes_forward,
                                   cpu::depthwise_planes_backward},
                                  {"cpu.depthwise_blocks", unless_depthwise, cpu::depthwise_blocks_forward,
                                   cpu::depthwise_blocks_backward},
                                  {"cpu.depthwise_bands", unless_depthwise_stride_one, cpu::depthwise_bands_forward,
                                   cpu::depthwise_bands_backward},
                                  {"cpu.merged_conv", nullptr, cpu::merged_conv_forward, nullptr},
                                  {"cpu.grouped_tiles", if_depthwise, cpu::grouped_tiles_forward,
                                   cpu::grouped_tiles_backward},
                                  {"cpu.columns", nullptr, cpu::columns_forward, cpu::columns_backward},
                              }};
[[maybe_unused]] const bool kCpuKernelsRegistered = register_kernels(kCpuKernels);

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride, int64_t groups,
                       c10::string_view forward_kernel, c10::string_view /*backward_kernel*/) {
  return run_forward(c10::DeviceType::CPU, input, weight, positions, bias, stride, groups, forward_kernel);
}

Gradients backward_cpu(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& positions, at::IntArrayRef stride, int64_t groups, std::array<bool, 3> mask,
                       c10::string_view kernel) {
  return run_backward(c10::DeviceType::CPU, grad_out, input, weight, positions, stride, groups, mask, kernel);
}

}  // namespace
}  // namespace acu

TORCH_LIBRARY_IMPL(acuzoo, CPU, m) {
  m.impl("active_conv2d", &acu::forward_cpu);
  m.impl("active_conv2d_backward", &acu::backward_cpu);
}
