// What every depthwise kernel's backward shares: its per-synapse sums turned into the
// weight and position gradients.
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "driver.h"

namespace acu {

// sums: (C, K, 3) of (d/dw, w * d/dalpha, w * d/dbeta), each reduced in a fixed order
// (undefined when neither gradient is asked for); reduce_rows: the backend's column sums
// over rows in order.
template <class ReduceRows>
Gradients depthwise_gradients(const at::Tensor& grad_x, const at::Tensor& sums, const Geometry& g,
                              std::array<bool, 3> mask, ReduceRows reduce_rows) {
  at::Tensor grad_w, grad_pos;
  if (mask[1]) grad_w = sums.select(2, 0).reshape({g.c_out, 1, g.synapses});
  if (mask[2]) {
    const int64_t per_set = g.c_out / g.sets;
    const at::Tensor slopes = sums.narrow(2, 1, 2).reshape({g.sets, per_set, g.synapses * 2});
    grad_pos = reduce_rows(slopes.transpose(0, 1).reshape({per_set, -1})).view({g.sets, g.synapses, 2});
  }
  return {grad_x, grad_w, grad_pos};
}

}  // namespace acu
