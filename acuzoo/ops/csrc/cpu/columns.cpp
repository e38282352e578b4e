// The ACU on the CPU by columns, any geometry: the bilinear columns of a chunk of samples
// contracted by GEMM (common/columns.h). One task reads one input plane once and writes
// its K rows of columns; the input gradient gathers each input plane in one task.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/columns.h"
#include "kernels.h"
#include "planes.h"
#include "reduce_rows.h"

namespace acu {
namespace {

struct CpuColumns {
  // Samples per columns chunk: about 32 MiB of columns, so that the GEMMs are large and
  // the parallel regions few, while the buffer stays a fraction of a batch.
  static int64_t columns_chunk(const Geometry& g) {
    const int64_t per_sample = std::max<int64_t>(1, g.units * g.c_per_group * g.synapses * g.out_h * g.out_w * 8);
    return std::max<int64_t>(1, std::min<int64_t>(g.batch, (int64_t(32) << 20) / per_sample));
  }

  // Rows of the columns buffer are (unit, ci, k); one task reads one input plane once
  // and writes its K rows.
  static void im2col(const at::Tensor& x, const at::Tensor& positions, at::Tensor& cols,
                     const Geometry& g) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "acu_im2col_cpu", [&] {
      using T = scalar_t;
      const auto taps = all_taps<T>(positions);
      const PlaneShape s = plane_shape(g);
      const T* xp = x.const_data_ptr<T>();
      T* cp = cols.mutable_data_ptr<T>();
      const int64_t K = g.synapses, rows = g.c_per_group * K, nb = g.batch;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t units_per_group = g.units / g.groups, units_per_set = g.units / g.sets;
      at::parallel_for(0, g.units * g.c_per_group * nb, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> xb, acc, coef;
        std::vector<int64_t> off;
        const T one = T(1);
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx % nb, ci = (idx / nb) % g.c_per_group, u = idx / (nb * g.c_per_group);
          const int64_t c = (u / units_per_group) * g.c_per_group + ci, p = u / units_per_set;
          const AxisTaps<T>* t = &taps[2 * p * K];
          const PhaseBox box = phase_box(t, K, s);
          xb.assign(static_cast<size_t>(s.sh * s.sw) * box.plane + kStripSlack, T(0));
          phases_into(xp + (n * g.c_in + c) * in_plane, s, box, xb.data());
          acc.resize(round_up(box.len, kStripSlack));
          for (int64_t k = 0; k < K; ++k) {
            const int64_t n_taps = value_taps(t + 2 * k, &one, 1, box, s, off, coef);
            sum_of_taps(xb.data(), off.data(), coef.data(), n_taps, T(0), box.len, acc.data());
            narrow_into(acc.data(), s, box, cp + ((n * g.units + u) * rows + ci * K + k) * out_plane);
          }
        }
      });
    });
  }

  static void col2im(const at::Tensor& gcols, const at::Tensor& positions, at::Tensor& gx,
                     const Geometry& g) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "acu_col2im_cpu", [&] {
      using T = scalar_t;
      const auto taps = all_taps<T>(positions);
      const PlaneShape s = plane_shape(g);
      const T* gc = gcols.const_data_ptr<T>();
      T* gxp = gx.mutable_data_ptr<T>();
      const int64_t K = g.synapses, rows = g.c_per_group * K, nb = g.batch;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t units_per_group = g.units / g.groups, units_per_set = g.units / g.sets;
      // One box for every set: an input plane gathers from the units of its group.
      const PhaseBox box = phase_box(taps.data(), g.sets * K, s);
      // Each input plane is owned by one task and summed in unit, synapse order.
      at::parallel_for(0, nb * g.c_in, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> gw, gxb;
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx / g.c_in, c = idx % g.c_in;
          const int64_t group = c / g.c_per_group, ci = c % g.c_per_group;
          gxb.assign(static_cast<size_t>(s.sh * s.sw) * box.plane, T(0));
          for (int64_t u = group * units_per_group; u < (group + 1) * units_per_group; ++u) {
            const AxisTaps<T>* t = &taps[2 * (u / units_per_set) * K];
            for (int64_t k = 0; k < K; ++k) {
              widen(gc + ((n * g.units + u) * rows + ci * K + k) * out_plane, s, box, gw);
              synapse_backward<T>(gw.data(), nullptr, gxb.data(), box, s, t[2 * k], t[2 * k + 1], T(1), false);
            }
          }
          plane_of_phases(gxb, s, box, gxp + idx * in_plane);
        }
      });
    });
  }

  static at::Tensor position_partials(const at::Tensor& gcols, const at::Tensor& x,
                                      const at::Tensor& positions, const Geometry& g) {
    const int64_t K = g.synapses, rows = g.c_per_group * K, nb = g.batch;
    const int64_t units_per_set = g.units / g.sets;
    // Row (n, q, ci) for unit u = p * units_per_set + q; columns (p, k, axis).
    at::Tensor partial = at::zeros({nb * units_per_set * g.c_per_group, g.sets * K * 2}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "acu_position_partials_cpu", [&] {
      using T = scalar_t;
      const auto taps = all_taps<T>(positions);
      const PlaneShape s = plane_shape(g);
      const T* gc = gcols.const_data_ptr<T>();
      const T* xp = x.const_data_ptr<T>();
      T* part = partial.mutable_data_ptr<T>();
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t units_per_group = g.units / g.groups;
      at::parallel_for(0, g.units * g.c_per_group * nb, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> xb, gw;
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx % nb, ci = (idx / nb) % g.c_per_group, u = idx / (nb * g.c_per_group);
          const int64_t c = (u / units_per_group) * g.c_per_group + ci;
          const int64_t p = u / units_per_set, q = u % units_per_set;
          const AxisTaps<T>* t = &taps[2 * p * K];
          const PhaseBox box = phase_box(t, K, s);
          phases_of(xp + (n * g.c_in + c) * in_plane, s, box, xb);
          for (int64_t k = 0; k < K; ++k) {
            widen(gc + ((n * g.units + u) * rows + ci * K + k) * out_plane, s, box, gw);
            const Read3<T> r =
                synapse_backward<T>(gw.data(), xb.data(), nullptr, box, s, t[2 * k], t[2 * k + 1], T(1), true);
            T* dst = part + ((n * units_per_set + q) * g.c_per_group + ci) * (g.sets * K * 2) + (p * K + k) * 2;
            dst[0] = r.d_alpha;
            dst[1] = r.d_beta;
          }
        }
      });
    });
    return partial;
  }


  static at::Tensor reduce_rows(const at::Tensor& partial) { return acu::reduce_rows(partial); }
};

}  // namespace

namespace cpu {

at::Tensor columns_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                           const std::optional<at::Tensor>& bias, const Geometry& g) {
  return acu::columns_forward<CpuColumns>(input, weight, positions, bias, g);
}

Gradients columns_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  return acu::columns_backward<CpuColumns>(grad_out, input, weight, positions, g, mask);
}

}  // namespace cpu
}  // namespace acu
