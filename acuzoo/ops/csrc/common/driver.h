// Device-independent driver of the ACU ops. A backend (CPU or CUDA) supplies the kernels;
// this file decides between the depthwise kernels, the backend's tiled columns (kTiles:
// CPU) and whole-chunk bilinear columns + GEMM, and turns
// their fixed-order partial sums into weight and position gradients.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <array>
#include <numeric>
#include <tuple>
#include <vector>

namespace acu {

struct Geometry {
  int64_t batch, c_in, height, width;  // input (batch is the chunk's size for columns)
  int64_t c_out, c_per_group, synapses;
  int64_t out_h, out_w;
  int64_t stride_h, stride_w;
  int64_t groups, sets, units;  // units: lcm(groups, sets); each reads one group with one set
};

inline Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& positions, at::IntArrayRef stride, int64_t groups) {
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1,
              "acuzoo: stride must be two ints >= 1");
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
  TORCH_CHECK(groups >= 1 && g.c_in % groups == 0 && g.c_out % groups == 0 &&
                  g.c_per_group == g.c_in / groups,
              "acuzoo: weight/groups do not match the input's channels");
  TORCH_CHECK(g.sets >= 1 && g.c_out % g.sets == 0 && positions.size(1) == g.synapses &&
                  positions.size(2) == 2,
              "acuzoo: positions must be (P, K, 2) with P dividing C_out");
  g.units = std::lcm(groups, g.sets);
  return g;
}

// One input channel per output channel: the depthwise ACU (any number of position sets).
inline bool is_depthwise(const Geometry& g) {
  return g.groups == g.c_in && g.c_out == g.c_in;
}

inline at::ScalarType math_type(at::ScalarType t) { return at::toOpMathType(t); }

// Columns (nb, U * rows, Ho, Wo) -> out (nb, C_out, Ho, Wo), written in place, with
// per-sample batched GEMMs: deterministic on every device.
inline void contract_by_matmul(const at::Tensor& cols, const at::Tensor& weight, const Geometry& g,
                               at::Tensor out) {
  const int64_t nb = cols.size(0), rows = g.c_per_group * g.synapses, pixels = g.out_h * g.out_w;
  const int64_t per_unit = g.c_out / g.units;
  const at::Tensor w = weight.view({1, g.units, per_unit, rows})
                           .expand({nb, g.units, per_unit, rows})
                           .reshape({nb * g.units, per_unit, rows});
  at::Tensor o = out.view({nb * g.units, per_unit, pixels});
  at::bmm_out(o, w, cols.view({nb * g.units, rows, pixels}));
}

inline at::Tensor contract_backward_by_matmul(const at::Tensor& go, const at::Tensor& weight,
                                              const Geometry& g) {
  const int64_t nb = go.size(0), rows = g.c_per_group * g.synapses, pixels = g.out_h * g.out_w;
  const at::Tensor w_t = weight.view({g.units, g.c_out / g.units, rows}).transpose(1, 2);
  return at::matmul(w_t, go.reshape({nb, g.units, g.c_out / g.units, pixels}))
      .view({nb, g.units * rows, g.out_h, g.out_w});
}

// Whether the backend's tiled columns kernels (CPU) take this layer's forward or backward.
template <class Backend>
bool uses_tiles(const Geometry& g, bool backward) {
  if constexpr (Backend::kTiles) {
    return Backend::tiles_suit(g, backward);
  } else {
    return false;
  }
}

// Whether the backend's channel-block depthwise kernels (CPU) take this layer.
template <class Backend>
bool uses_blocks(const Geometry& g, const at::Tensor& positions, const at::Tensor& input) {
  if constexpr (Backend::kBlocks) {
    return Backend::blocks_suit(g, positions, input);
  } else {
    return false;
  }
}

// The output and the input gradient take the input's memory format, as PyTorch's
// convolutions do (the fake kernels in native_registration.py follow the same rule).
inline bool is_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor in_format_of(const at::Tensor& out, const at::Tensor& input) {
  return out.contiguous(is_channels_last(input) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

template <class Backend>
at::Tensor forward(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& positions_,
                   const std::optional<at::Tensor>& bias_, at::IntArrayRef stride, int64_t groups) {
  Geometry g = make_geometry(input_, weight_, positions_, stride, groups);
  const at::ScalarType dtype = input_.scalar_type();
  const at::Tensor weight = weight_.to(dtype).contiguous();
  const at::Tensor positions = positions_.to(math_type(dtype)).contiguous();
  std::optional<at::Tensor> bias;
  if (bias_.has_value() && bias_->defined()) bias = bias_->to(dtype).contiguous();
  if constexpr (Backend::kTiles) {
    // Channels-last kernels: they take the input in whichever format it comes.
    if (uses_tiles<Backend>(g, false)) {
      return in_format_of(Backend::tiles_forward(input_, weight, positions, bias, g), input_);
    }
  }
  if constexpr (Backend::kBlocks) {
    // Channel-block kernels read and write either memory format.
    if (uses_blocks<Backend>(g, positions, input_)) {
      return Backend::blocks_forward(input_, weight, positions, bias, g);
    }
  }
  const at::Tensor input = input_.contiguous();
  if (is_depthwise(g)) return in_format_of(Backend::depthwise_forward(input, weight, positions, bias, g), input_);

  const int64_t rows = g.c_per_group * g.synapses;
  const int64_t chunk = Backend::columns_chunk(g);
  at::Tensor out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options());
  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t nb = std::min(chunk, g.batch - n0);
    Geometry gc = g;
    gc.batch = nb;
    // (nb, U * rows, Ho, Wo): the ACU is the grouped 1x1 convolution of these columns.
    at::Tensor cols = at::empty({nb, g.units * rows, g.out_h, g.out_w}, input.options());
    Backend::im2col(input.narrow(0, n0, nb), positions, cols, gc);
    contract_by_matmul(cols, weight, g, out.narrow(0, n0, nb));
  }
  if (bias.has_value()) out.add_(bias->view({1, g.c_out, 1, 1}));
  return in_format_of(out, input_);
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_,
    const at::Tensor& positions_, at::IntArrayRef stride, int64_t groups,
    std::array<bool, 3> mask) {
  Geometry g = make_geometry(input_, weight_, positions_, stride, groups);
  const at::ScalarType dtype = input_.scalar_type();
  const at::Tensor weight = weight_.to(dtype).contiguous();
  const at::ScalarType acc = math_type(dtype);
  const at::Tensor positions = positions_.to(acc).contiguous();
  const bool need_x = mask[0], need_w = mask[1], need_pos = mask[2];
  const bool tiles = uses_tiles<Backend>(g, true), blocks = uses_blocks<Backend>(g, positions, input_);
  // The tiled and channel-block kernels take input and gradient in whichever format they come.
  const bool any_format = tiles || blocks;
  const at::Tensor input = any_format ? input_ : input_.contiguous();
  const at::Tensor grad_out = any_format ? grad_out_.to(dtype) : grad_out_.to(dtype).contiguous();
  at::Tensor grad_x, grad_w, grad_pos;

  if (is_depthwise(g)) {
    // sums: (C, K, 3) of (d/dw, w * d/dalpha, w * d/dbeta), each reduced in a fixed order.
    at::Tensor gx, sums;
    if constexpr (Backend::kBlocks) {
      if (blocks) {
        std::tie(gx, sums) = Backend::blocks_backward(grad_out, input, weight, positions, g, need_x, need_w || need_pos);
      }
    }
    if (!blocks) {
      std::tie(gx, sums) = Backend::depthwise_backward(grad_out, input, weight, positions, g, need_x,
                                                       need_w || need_pos);
    }
    grad_x = gx;
    if (need_w) grad_w = sums.select(2, 0).reshape({g.c_out, 1, g.synapses});
    if (need_pos) {
      const int64_t per_set = g.c_out / g.sets;
      const at::Tensor slopes = sums.narrow(2, 1, 2).reshape({g.sets, per_set, g.synapses * 2});
      grad_pos = Backend::reduce_rows(slopes.transpose(0, 1).reshape({per_set, -1}))
                     .view({g.sets, g.synapses, 2});
    }
  } else if (tiles) {
    if constexpr (Backend::kTiles) {
      std::tie(grad_x, grad_w, grad_pos) = Backend::tiles_backward(grad_out, input, weight, positions, g, mask);
    }
  } else {
    const int64_t per_unit = g.c_out / g.units;
    const int64_t rows = g.c_per_group * g.synapses;
    const int64_t pixels = g.out_h * g.out_w;
    if (need_x) grad_x = at::empty_like(input);
    at::Tensor gw_acc = need_w ? at::zeros({g.units * per_unit * rows}, input.options().dtype(acc))
                               : at::Tensor();
    at::Tensor pos_acc = need_pos ? at::zeros({g.sets * g.synapses * 2}, input.options().dtype(acc))
                                  : at::Tensor();
    const int64_t chunk = Backend::columns_chunk(g);
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, g.batch - n0);
      Geometry gc = g;
      gc.batch = nb;
      const at::Tensor x = input.narrow(0, n0, nb);
      const at::Tensor go = grad_out.narrow(0, n0, nb);  // (nb, C_out, Ho, Wo)
      if (need_w) {
        at::Tensor cols = at::empty({nb, g.units * rows, g.out_h, g.out_w}, input.options());
        Backend::im2col(x, positions, cols, gc);
        // Per sample (U, per_unit, HW) @ (U, HW, rows); summed over samples in a fixed order.
        const at::Tensor per_sample = at::matmul(go.reshape({nb, g.units, per_unit, pixels}),
                                                 cols.view({nb, g.units, rows, pixels}).transpose(2, 3));
        gw_acc.add_(Backend::reduce_rows(per_sample.reshape({nb, -1}).to(acc)));
      }
      if (need_x || need_pos) {
        const at::Tensor gcols = contract_backward_by_matmul(go, weight, g);  // (nb, U * rows, Ho, Wo)
        if (need_x) {
          at::Tensor gx = grad_x.narrow(0, n0, nb);
          Backend::col2im(gcols, positions, gx, gc);
        }
        if (need_pos) {
          at::Tensor partial = Backend::position_partials(gcols, x, positions, gc);
          pos_acc.add_(Backend::reduce_rows(partial));
        }
      }
    }
    if (need_w) grad_w = gw_acc.view({g.c_out, g.c_per_group, g.synapses});
    if (need_pos) grad_pos = pos_acc.view({g.sets, g.synapses, 2});
  }
  // Gradients not asked for come back as empty tensors: the schema returns three Tensors.
  grad_x = grad_x.defined() ? in_format_of(grad_x, input_) : at::empty({0}, input_.options());
  grad_w = grad_w.defined() ? grad_w.to(weight_.scalar_type()) : at::empty({0}, weight_.options());
  grad_pos = grad_pos.defined() ? grad_pos.to(positions_.scalar_type())
                                : at::empty({0}, positions_.options());
  return {grad_x, grad_w, grad_pos};
}

}  // namespace acu
