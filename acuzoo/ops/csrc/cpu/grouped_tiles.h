// Grouped/shared ACU on the CPU by tiles: bilinear columns of a few output rows at a
// time, kept in cache and contracted by GEMM at once, forward and backward. The whole
// columns buffer of the batch (N x C_in*K x H*W) is never built.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "../common/driver.h"

namespace acu {

// Whether the tiled kernels serve this layer (not depthwise; for the backward, enough
// samples that every thread owns whole samples, which keeps gradient sums race-free).
bool tiles_suit(const Geometry& g, bool backward);

at::Tensor tiles_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                         const std::optional<at::Tensor>& bias, const Geometry& g);

// Same contract as the driver's backward: (grad_input, grad_weight, grad_positions), each
// undefined when not asked for; inputs already contiguous and of one dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> tiles_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& positions, const Geometry& g,
                                                              std::array<bool, 3> mask);

// Test hook: columns per tile (0: default) and mode (0: auto, 1: always tiles, -1: never).
void set_tiles_config(int64_t tile_elements, int64_t mode);

}  // namespace acu
