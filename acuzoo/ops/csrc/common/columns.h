// The columns kernels of every backend: bilinear columns of a chunk of samples, contracted
// with the weight by GEMM (the ACU is the grouped 1x1 convolution of its columns), and
// their fixed-order partial sums turned into weight and position gradients.
//
// A backend supplies (as static functions): columns_chunk(g), samples per chunk;
// im2col(x, positions, cols, g); col2im(gcols, positions, gx, g); position_partials(gcols,
// x, positions, g), rows summed by reduce_rows(partial), each column over rows in order.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>

#include "driver.h"

namespace acu {

// Columns (nb, U * rows, Ho, Wo) -> out (nb, C_out, Ho, Wo), written in place, with
// per-sample batched GEMMs: deterministic on every device.
inline void contract_by_matmul(const at::Tensor& cols, const at::Tensor& weight, const Geometry& g, at::Tensor out) {
  const int64_t nb = cols.size(0), rows = g.c_per_group * g.synapses, pixels = g.out_h * g.out_w;
  const int64_t per_unit = g.c_out / g.units;
  const at::Tensor w =
      weight.view({1, g.units, per_unit, rows}).expand({nb, g.units, per_unit, rows}).reshape({nb * g.units, per_unit, rows});
  at::Tensor o = out.view({nb * g.units, per_unit, pixels});
  at::bmm_out(o, w, cols.view({nb * g.units, rows, pixels}));
}

inline at::Tensor contract_backward_by_matmul(const at::Tensor& go, const at::Tensor& weight, const Geometry& g) {
  const int64_t nb = go.size(0), rows = g.c_per_group * g.synapses, pixels = g.out_h * g.out_w;
  const at::Tensor w_t = weight.view({g.units, g.c_out / g.units, rows}).transpose(1, 2);
  return at::matmul(w_t, go.reshape({nb, g.units, g.c_out / g.units, pixels})).view({nb, g.units * rows, g.out_h, g.out_w});
}

template <class Backend>
at::Tensor columns_forward(const at::Tensor& input_, const at::Tensor& weight, const at::Tensor& positions,
                           const std::optional<at::Tensor>& bias, const Geometry& g) {
  const at::Tensor input = input_.contiguous();
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
  return out;
}

template <class Backend>
Gradients columns_backward(const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight,
                           const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  const at::Tensor input = input_.contiguous();
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::ScalarType acc = positions.scalar_type();
  const bool need_x = mask[0], need_w = mask[1], need_pos = mask[2];
  const int64_t per_unit = g.c_out / g.units;
  const int64_t rows = g.c_per_group * g.synapses;
  const int64_t pixels = g.out_h * g.out_w;
  at::Tensor grad_x, grad_w, grad_pos;
  if (need_x) grad_x = at::empty_like(input);
  at::Tensor gw_acc = need_w ? at::zeros({g.units * per_unit * rows}, input.options().dtype(acc)) : at::Tensor();
  at::Tensor pos_acc = need_pos ? at::zeros({g.sets * g.synapses * 2}, input.options().dtype(acc)) : at::Tensor();
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
      const at::Tensor per_sample =
          at::matmul(go.reshape({nb, g.units, per_unit, pixels}), cols.view({nb, g.units, rows, pixels}).transpose(2, 3));
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
  return {grad_x, grad_w, grad_pos};
}

}  // namespace acu
