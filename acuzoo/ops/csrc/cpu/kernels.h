// The CPU kernels, each a forward and (but for merged_conv) a backward with the contract of
// common/driver.h; registration.cpp lists them by name.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "../common/driver.h"

namespace acu {
namespace cpu {

#define ACU_CPU_FORWARD(name)                                                                                  \
  at::Tensor name##_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions, \
                            const std::optional<at::Tensor>& bias, const Geometry& g)
#define ACU_CPU_BACKWARD(name)                                                                                 \
  Gradients name##_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, \
                            const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask)

// Depthwise, any stride: planes stacked side by side at stride 1, split into their stride
// phases otherwise (depthwise_planes.cpp).
ACU_CPU_FORWARD(depthwise_planes);
ACU_CPU_BACKWARD(depthwise_planes);
// Depthwise, any stride: channel blocks of the merged kernel reading the channels-last
// tensors in place (depthwise_blocks.cpp).
ACU_CPU_FORWARD(depthwise_blocks);
ACU_CPU_BACKWARD(depthwise_blocks);
// Depthwise, stride 1: channel blocks copied by bands with zero borders (depthwise_blocks.cpp).
ACU_CPU_FORWARD(depthwise_bands);
ACU_CPU_BACKWARD(depthwise_bands);
// Any layer, forward only: the merged kernel run by the platform's conv (merged_conv.cpp).
ACU_CPU_FORWARD(merged_conv);
// Grouped or shared layers: cache-sized tiles of columns contracted by GEMM (grouped_tiles.cpp).
ACU_CPU_FORWARD(grouped_tiles);
ACU_CPU_BACKWARD(grouped_tiles);
// Any layer: whole-chunk bilinear columns and GEMM (columns.cpp).
ACU_CPU_FORWARD(columns);
ACU_CPU_BACKWARD(columns);

#undef ACU_CPU_FORWARD
#undef ACU_CPU_BACKWARD

}  // namespace cpu
}  // namespace acu
