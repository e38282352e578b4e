// Depthwise ACU on the CPU by channel blocks (any stride, compact synapse sets): each
// channel's synapses merged into its dense kernel (Theorem 2) and run as a depthwise
// correlation whose vector lanes are channels. See acu_cpu_blocks.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "../common/driver.h"

namespace acu {

// Whether the channel-block kernels serve this depthwise layer: unless a test forces them,
// a merged kernel small enough on this plane, for this input's format.
bool blocks_suit(const Geometry& g, const at::Tensor& positions, const at::Tensor& input);

// Input in any memory format; the output takes the input's.
at::Tensor blocks_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                          const std::optional<at::Tensor>& bias, const Geometry& g);

// (grad_input or undefined, sums (C, K, 3) of (d/dw, w * d/dalpha, w * d/dbeta) or
// undefined): the contract of the depthwise backward in acu_driver.h.
std::tuple<at::Tensor, at::Tensor> blocks_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                   const at::Tensor& weight, const at::Tensor& positions,
                                                   const Geometry& g, bool need_x, bool need_sums);

// Test hooks: 1 always, -1 never, 0 by the cost rule of blocks_suit; and for the blocks'
// reads at stride 1 (1 in place, -1 band copies, 0 by the rule of reads_in_place).
void set_blocks_mode(int64_t mode);
void set_in_place_mode(int64_t mode);

}  // namespace acu
