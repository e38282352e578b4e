// The CUDA kernels' CPU twin: the same per-element functions of common/math.h (the bodies of
// the CUDA kernels), looped over on the CPU. Registered as acuzoo::_twin_active_conv2d and
// acuzoo::_twin_active_conv2d_backward for the tests, so that the arithmetic and indexing
// the GPU runs are checked against the reference on every CI run, GPU or not. Not fast.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/columns.h"
#include "../common/depthwise.h"
#include "../common/math.h"

namespace acu {
namespace {

inline Dims twin_dims(const Geometry& g) {
  return {g.c_in, g.height, g.width, g.out_h, g.out_w, g.synapses,
          static_cast<int>(g.stride_h), static_cast<int>(g.stride_w), g.c_out / g.sets};
}

inline Units twin_units(const Geometry& g) {
  return {g.units, g.units / g.groups, g.units / g.sets, g.c_per_group, g.c_per_group * g.synapses, g.batch};
}

struct TwinBackend {
  // Two chunks for any batch above one, so that the chunked columns code is exercised.
  static int64_t columns_chunk(const Geometry& g) { return std::max<int64_t>(1, (g.batch + 1) / 2); }

  // Every channel's sparse table, as the CUDA build kernel writes them.
  template <typename T>
  struct Tables {
    TableLayout t;
    std::vector<int> ints;
    std::vector<T> vals;
    const int* ints_of(int64_t c) const { return ints.data() + c * t.ints(); }
    const T* vals_of(int64_t c) const { return vals.data() + c * t.values(); }
  };

  template <typename T>
  static Tables<T> build_tables(const T* pos, const T* w, const Geometry& g) {
    Tables<T> tables{TableLayout::of(g.synapses), {}, {}};
    const TableLayout& t = tables.t;
    tables.ints.resize(g.c_in * t.ints());
    tables.vals.resize(g.c_in * t.values());
    std::vector<short> map(kMapSize);
    for (int64_t c = 0; c < g.c_in; ++c) {
      build_channel_table<T, T>(pos, c / (g.c_out / g.sets), w + c * t.K, t, tables.ints.data() + c * t.ints(),
                                tables.vals.data() + c * t.values(), map.data());
    }
    return tables;
  }

  static at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& positions, const std::optional<at::Tensor>& bias,
                                      const Geometry& g) {
    at::Tensor out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_twin_dw_forward", [&] {
      using T = scalar_t;
      const Dims d = twin_dims(g);
      const T* x = input.const_data_ptr<T>();
      const T* b = bias.has_value() ? bias->const_data_ptr<T>() : nullptr;
      const auto tables = build_tables(positions.const_data_ptr<T>(), weight.const_data_ptr<T>(), g);
      const TableLayout& t = tables.t;
      T* y = out.mutable_data_ptr<T>();
      const int h = static_cast<int>(d.H), w = static_cast<int>(d.W);
      at::parallel_for(0, g.batch * g.c_in, 1, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t c = plane % d.C;
          const int* ints = tables.ints_of(c);
          const T* vals = tables.vals_of(c);
          const T bc = b ? b[c] : T(0);
          for (int m = 0; m < d.Ho; ++m) {
            for (int j = 0; j < d.Wo; ++j) {
              const int r0 = m * d.sh, c0 = j * d.sw;
              y[(plane * d.Ho + m) * d.Wo + j] =
                  bc + sparse_forward_at<T>(x + plane * d.H * d.W, h, w, r0, c0, ints + t.tap_dr(),
                                            ints + t.tap_dc(), vals + t.tap_w(), ints[0],
                                            box_inside(ints + 2, r0, c0, h, w));
            }
          }
        }
      });
    });
    return out;
  }

  // The input gradient with the compile-time strides the CUDA kernel is built with, walking
  // the sh x sw patches of input pixels as its threads do.
  template <int ST, typename T>
  static void grad_input(const T* go, const Tables<T>& tables, T* gx, const Dims& d, int64_t planes) {
    const TableLayout& t = tables.t;
    const int sh = d.sh, sw = d.sw, h = static_cast<int>(d.H), w = static_cast<int>(d.W);
    const int rows = (h + sh - 1) / sh, cols = (w + sw - 1) / sw;
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int* ints = tables.ints_of(plane % d.C);
        const T* vals = tables.vals_of(plane % d.C);
        for (int R = 0; R < rows; ++R) {
          for (int C = 0; C < cols; ++C) {
            for (int pr = 0; pr < sh; ++pr) {
              for (int pc = 0; pc < sw; ++pc) {
                const int r = R * sh + pr, c = C * sw + pc;
                if (r >= h || c >= w) continue;
                gx[(plane * h + r) * w + c] = sparse_gather_at<ST, T>(
                    go + plane * d.Ho * d.Wo, static_cast<int>(d.Ho), static_cast<int>(d.Wo), sh, sw, R, C, pr, pc,
                    ints + t.tap_dr(), ints + t.tap_dc(), vals + t.tap_w(), ints[0]);
              }
            }
          }
        }
      }
    });
  }

  static std::tuple<at::Tensor, at::Tensor> depthwise_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                               const at::Tensor& weight, const at::Tensor& positions,
                                                               const Geometry& g, bool need_x, bool need_sums) {
    at::Tensor gx = need_x ? at::empty_like(input) : at::Tensor();
    at::Tensor sums = need_sums ? at::zeros({g.c_in, g.synapses, 3}, input.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_twin_dw_backward", [&] {
      using T = scalar_t;
      const Dims d = twin_dims(g);
      const T* x = input.const_data_ptr<T>();
      const T* go = grad_out.const_data_ptr<T>();
      const T* w = weight.const_data_ptr<T>();
      const auto tables = build_tables(positions.const_data_ptr<T>(), w, g);
      const TableLayout& t = tables.t;
      if (need_x) {
        T* gxp = gx.mutable_data_ptr<T>();
        const int64_t planes = g.batch * g.c_in;
        if (d.sh == 1 && d.sw == 1) {
          grad_input<1, T>(go, tables, gxp, d, planes);
        } else if (d.sh == 2 && d.sw == 2) {
          grad_input<2, T>(go, tables, gxp, d, planes);
        } else {
          grad_input<0, T>(go, tables, gxp, d, planes);
        }
      }
      if (need_sums) {
        T* out = sums.mutable_data_ptr<T>();
        const int h = static_cast<int>(d.H), wd = static_cast<int>(d.W);
        at::parallel_for(0, g.c_in, 1, [&](int64_t begin, int64_t end) {
          std::vector<T> dots(t.cap);
          for (int64_t c = begin; c < end; ++c) {
            const int* ints = tables.ints_of(c);
            const int n = ints[1];
            for (int e0 = 0; e0 < n; e0 += kDotsPerPass) {
              T pass[kDotsPerPass] = {};
              for (int64_t s = 0; s < g.batch; ++s) {
                const int64_t plane = s * d.C + c;
                for (int m = 0; m < d.Ho; ++m) {
                  for (int j = 0; j < d.Wo; ++j) {
                    const int r0 = m * d.sh, c0 = j * d.sw;
                    cell_dots_at<kDotsPerPass, T>(x + plane * d.H * d.W, h, wd, r0, c0, ints + t.cell_dr(),
                                                  ints + t.cell_dc(), e0, n, box_inside(ints + 6, r0, c0, h, wd),
                                                  go[(plane * d.Ho + m) * d.Wo + j], pass);
                  }
                }
              }
              for (int q = 0; q < kDotsPerPass && e0 + q < n; ++q) dots[e0 + q] = pass[q];
            }
            for (int k = 0; k < t.K; ++k) {
              combine_synapse_sums<T>(ints, tables.vals_of(c), t, dots.data(), k, w[c * t.K + k],
                                      out + (c * t.K + k) * 3);
            }
          }
        });
      }
    });
    return {gx, sums};
  }

  static void im2col(const at::Tensor& x, const at::Tensor& positions, at::Tensor& cols, const Geometry& g) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "acu_twin_im2col", [&] {
      const Dims d = twin_dims(g);
      const Units u = twin_units(g);
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* pos = positions.const_data_ptr<scalar_t>();
      scalar_t* cp = cols.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, cols.numel(), 256, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) cp[i] = im2col_element<scalar_t>(xp, pos, i, d, u);
      });
    });
  }

  static void col2im(const at::Tensor& gcols, const at::Tensor& positions, at::Tensor& gx, const Geometry& g) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "acu_twin_col2im", [&] {
      const Dims d = twin_dims(g);
      const Units u = twin_units(g);
      const scalar_t* gc = gcols.const_data_ptr<scalar_t>();
      const scalar_t* pos = positions.const_data_ptr<scalar_t>();
      scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, gx.numel(), 256, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) gxp[i] = col2im_element<scalar_t>(gc, pos, i, d, u);
      });
    });
  }

  static at::Tensor position_partials(const at::Tensor& gcols, const at::Tensor& x, const at::Tensor& positions,
                                      const Geometry& g) {
    const Units u = twin_units(g);
    at::Tensor partial = at::zeros({g.batch * u.per_set * g.c_per_group, g.sets * g.synapses * 2}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "acu_twin_position_partials", [&] {
      const Dims d = twin_dims(g);
      const scalar_t* gc = gcols.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* pos = positions.const_data_ptr<scalar_t>();
      scalar_t* part = partial.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.units * u.rows * g.batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t line = begin; line < end; ++line) {
          scalar_t a = 0, b = 0;
          for (int64_t pix = 0; pix < d.Ho * d.Wo; ++pix) {
            const Read3<scalar_t> t = position_terms<scalar_t>(gc, xp, pos, line, pix, d, u);
            a += t.d_alpha;
            b += t.d_beta;
          }
          scalar_t* dst = part + position_slot(line, d, u, g.sets);
          dst[0] = a;
          dst[1] = b;
        }
      });
    });
    return partial;
  }

  static at::Tensor reduce_rows(const at::Tensor& partial) { return partial.sum(0); }
};

// The CUDA build's two kernel families, each where the CUDA op would run it: depthwise
// layers by channel tables, the others by columns.
at::Tensor twin_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride, int64_t groups) {
  const Geometry g = make_geometry(input, weight, positions, stride, groups);
  const Operands o = operands_for(input, weight, positions, bias);
  const at::Tensor out = is_depthwise(g)
                             ? TwinBackend::depthwise_forward(input.contiguous(), o.weight, o.positions, o.bias, g)
                             : columns_forward<TwinBackend>(input, o.weight, o.positions, o.bias, g);
  return in_format_of(out, input);
}

Gradients twin_backward(const at::Tensor& grad_out_, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& positions, at::IntArrayRef stride, int64_t groups, std::array<bool, 3> mask) {
  const Geometry g = make_geometry(input, weight, positions, stride, groups);
  const Operands o = operands_for(input, weight, positions, std::nullopt);
  const at::Tensor grad_out = grad_out_.to(input.scalar_type());
  Gradients grads;
  if (is_depthwise(g)) {
    const auto [gx, sums] = TwinBackend::depthwise_backward(grad_out.contiguous(), input.contiguous(), o.weight,
                                                            o.positions, g, mask[0], mask[1] || mask[2]);
    grads = depthwise_gradients(gx, sums, g, mask, TwinBackend::reduce_rows);
  } else {
    grads = columns_backward<TwinBackend>(grad_out, input, o.weight, o.positions, g, mask);
  }
  return op_gradients(grads, input, weight, positions);
}

}  // namespace
}  // namespace acu

TORCH_LIBRARY_IMPL(acuzoo, CPU, m) {
  m.impl("_twin_active_conv2d", &acu::twin_forward);
  m.impl("_twin_active_conv2d_backward", &acu::twin_backward);
}
