// The geometry of one ACU call, and the memory format its outputs take.
#pragma once

#include <c10/util/strides.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <numeric>

namespace acu {

struct Geometry {
  int64_t batch, c_in, height, width;  // input (batch is the chunk's size for columns)
  int64_t c_out, c_per_group, synapses;
  int64_t out_h, out_w;
  int64_t stride_h, stride_w;
  int64_t groups, sets, units;  // units: lcm(groups, sets); each reads one group with one set
};

inline Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                              at::IntArrayRef stride, int64_t groups) {
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, "acuzoo: stride must be two ints >= 1");
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 3 && positions.dim() == 3,
              "acuzoo: expected input (N, C, H, W), weight (C_out, C_in/groups, K), positions (P, K, 2)");
  Geometry g{};
  g.batch = input.size(0);
  g.c_in = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.c_out = weight.size(0);
  g.c_per_group = weight.size(1);
  g.synapses = weight.size(2);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.out_h = (g.height - 1) / g.stride_h + 1;
  g.out_w = (g.width - 1) / g.stride_w + 1;
  g.groups = groups;
  g.sets = positions.size(0);
  TORCH_CHECK(groups >= 1 && g.c_in % groups == 0 && g.c_out % groups == 0 && g.c_per_group == g.c_in / groups,
              "acuzoo: weight/groups do not match the input's channels");
  TORCH_CHECK(g.sets >= 1 && g.c_out % g.sets == 0 && positions.size(1) == g.synapses && positions.size(2) == 2,
              "acuzoo: positions must be (P, K, 2) with P dividing C_out");
  g.units = std::lcm(groups, g.sets);
  return g;
}

// One input channel per output channel: the depthwise ACU (any number of position sets).
inline bool is_depthwise(const Geometry& g) { return g.groups == g.c_in && g.c_out == g.c_in; }

inline at::ScalarType math_type(at::ScalarType t) { return at::toOpMathType(t); }

// The output and the input gradient take the input's memory format, as PyTorch's
// convolutions do (the fake kernels in native_registration.py follow the same rule).
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  return is_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// ``t`` with exactly the strides torch.empty gives its sizes in ``format``: what the fake
// kernels promise torch.compile. A tensor that merely counts as that format (a dimension of
// size one with another stride) is copied.
inline at::Tensor in_exact_layout(const at::Tensor& t, at::MemoryFormat format) {
  const bool channels_last = format == at::MemoryFormat::ChannelsLast && t.dim() == 4;
  const bool exact = channels_last ? t.strides() == at::IntArrayRef(c10::get_channels_last_strides_2d(t.sizes()))
                                   : t.strides() == at::IntArrayRef(c10::contiguous_strides(t.sizes()));
  if (exact) return t;
  return at::empty(t.sizes(), t.options().memory_format(channels_last ? format : at::MemoryFormat::Contiguous))
      .copy_(t);
}

inline at::Tensor in_format_of(const at::Tensor& out, const at::Tensor& input) {
  return in_exact_layout(out, memory_format_of(input));
}

}  // namespace acu
