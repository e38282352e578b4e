// CPU kernels of the ACU. Work is split by (sample, channel) plane with at::parallel_for;
// within a plane every synapse is a constant sub-pixel shift, so each of its (at most 4)
// integer taps is a strided axpy or dot over whole rows, which the compiler vectorises.
// Weight/position gradients are written per plane and reduced in a fixed order, so two
// runs give bitwise the same result.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "acu_driver.h"
#include "acu_math.h"

namespace acu {
namespace {

struct PlaneShape {
  int h, w, out_h, out_w, sh, sw;
};

inline PlaneShape plane_shape(const Geometry& g) {
  return {static_cast<int>(g.height), static_cast<int>(g.width), static_cast<int>(g.out_h),
          static_cast<int>(g.out_w), static_cast<int>(g.stride_h), static_cast<int>(g.stride_w)};
}

template <typename T>
std::vector<AxisTaps<T>> all_taps(const at::Tensor& positions) {
  const int64_t n = positions.numel() / 2;
  const T* pos = positions.data_ptr<T>();
  std::vector<AxisTaps<T>> taps(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    taps[2 * i] = axis_taps<T>(pos[2 * i]);
    taps[2 * i + 1] = axis_taps<T>(pos[2 * i + 1]);
  }
  return taps;
}

// out[m, n] += scale * bilinear read of x at (m*sh + alpha, n*sw + beta), one plane.
template <typename T>
void sample_add(const T* x, T* out, const PlaneShape& s, const AxisTaps<T>& ta,
                const AxisTaps<T>& tb, T scale) {
  for (int i = 0; i < ta.count; ++i) {
    if (ta.value[i] == T(0)) continue;
    const int dr = ta.first + i;
    const int m0 = first_valid(dr, s.sh), m1 = end_valid(dr, s.sh, s.h, s.out_h);
    for (int j = 0; j < tb.count; ++j) {
      if (tb.value[j] == T(0)) continue;
      const int dc = tb.first + j;
      const int n0 = first_valid(dc, s.sw), n1 = end_valid(dc, s.sw, s.w, s.out_w);
      const T coef = scale * ta.value[i] * tb.value[j];
      for (int m = m0; m < m1; ++m) {
        const T* xr = x + static_cast<int64_t>(m * s.sh + dr) * s.w + dc;
        T* orow = out + static_cast<int64_t>(m) * s.out_w;
        if (s.sw == 1) {
#pragma omp simd
          for (int n = n0; n < n1; ++n) orow[n] += coef * xr[n];
        } else {
          const int sw = s.sw;
#pragma omp simd
          for (int n = n0; n < n1; ++n) orow[n] += coef * xr[n * sw];
        }
      }
    }
  }
}

// One synapse's backward over one plane. With gx, adds scale * the transposed read of g
// (input gradient); with want_dots, returns the dots of g with the value and slope reads.
template <typename T>
Read3<T> synapse_backward(const T* g, const T* x, T* gx, const PlaneShape& s,
                          const AxisTaps<T>& ta, const AxisTaps<T>& tb, T scale, bool want_dots) {
  Read3<T> res{T(0), T(0), T(0)};
  for (int i = 0; i < ta.count; ++i) {
    const int dr = ta.first + i;
    const int m0 = first_valid(dr, s.sh), m1 = end_valid(dr, s.sh, s.h, s.out_h);
    for (int j = 0; j < tb.count; ++j) {
      const T cv = ta.value[i] * tb.value[j];
      const T ca = ta.slope[i] * tb.value[j];
      const T cb = ta.value[i] * tb.slope[j];
      const bool dot = want_dots && (cv != T(0) || ca != T(0) || cb != T(0));
      const bool scatter = gx != nullptr && cv != T(0);
      if (!dot && !scatter) continue;
      const int dc = tb.first + j;
      const int n0 = first_valid(dc, s.sw), n1 = end_valid(dc, s.sw, s.w, s.out_w);
      const T coef = scale * cv;
      const int sw = s.sw;
      T d = T(0);
      for (int m = m0; m < m1; ++m) {
        const T* gr = g + static_cast<int64_t>(m) * s.out_w;
        const int64_t at = static_cast<int64_t>(m * s.sh + dr) * s.w + dc;
        if (dot && scatter) {
          const T* xr = x + at;
          T* gxr = gx + at;
#pragma omp simd reduction(+ : d)
          for (int n = n0; n < n1; ++n) {
            d += gr[n] * xr[n * sw];
            gxr[n * sw] += coef * gr[n];
          }
        } else if (dot) {
          const T* xr = x + at;
#pragma omp simd reduction(+ : d)
          for (int n = n0; n < n1; ++n) d += gr[n] * xr[n * sw];
        } else {
          T* gxr = gx + at;
#pragma omp simd
          for (int n = n0; n < n1; ++n) gxr[n * sw] += coef * gr[n];
        }
      }
      res.value += cv * d;
      res.d_alpha += ca * d;
      res.d_beta += cb * d;
    }
  }
  return res;
}

// ---- stride 1: zero-padded planes, one flat loop per tap ------------------------------
// With stride 1 a tap (dr, dc) reads x[m + dr, n + dc]. On a zero-padded copy of the plane
// of width wp, that is xpad[q + offset] for q = m * wp + n: one contiguous loop over the
// whole plane instead of one short loop per row, which is what makes 7x7 and 14x14 planes
// fast. The columns n >= out_w of each padded row are scratch: never copied out, and the
// output gradient is zero there, so they add nothing to dots and scatters.

struct PadBox {
  int top, left, hp, wp;
};

// Padding that holds every tap of K synapses; taps that miss the plane entirely
// (|d| >= size) are skipped by the loops, so the padding stays under one plane size.
template <typename T>
PadBox pad_box(const AxisTaps<T>* taps, int64_t K, const PlaneShape& s) {
  int rmin = 0, rmax = 0, cmin = 0, cmax = 0;
  for (int64_t k = 0; k < K; ++k) {
    const AxisTaps<T>& ta = taps[2 * k];
    const AxisTaps<T>& tb = taps[2 * k + 1];
    for (int i = 0; i < ta.count; ++i) {
      const int d = ta.first + i;
      if (d > -s.h && d < s.h) rmin = std::min(rmin, d), rmax = std::max(rmax, d);
    }
    for (int j = 0; j < tb.count; ++j) {
      const int d = tb.first + j;
      if (d > -s.w && d < s.w) cmin = std::min(cmin, d), cmax = std::max(cmax, d);
    }
  }
  return {-rmin, -cmin, s.h - rmin + rmax, s.w - cmin + cmax};
}

template <typename T>
void pad_into(const T* x, const PlaneShape& s, const PadBox& b, std::vector<T>& buf) {
  buf.assign(static_cast<size_t>(b.hp) * b.wp, T(0));
  for (int r = 0; r < s.h; ++r) {
    std::copy(x + static_cast<int64_t>(r) * s.w, x + static_cast<int64_t>(r + 1) * s.w,
              buf.data() + static_cast<int64_t>(r + b.top) * b.wp + b.left);
  }
}

inline bool tap_hits(int d, int size) { return d > -size && d < size; }

template <typename T>
void flat_forward(const T* x, T* out, const PlaneShape& s, const AxisTaps<T>* taps, int64_t K,
                  const T* w, T bias, std::vector<T>& xpad, std::vector<T>& acc) {
  const PadBox b = pad_box(taps, K, s);
  pad_into(x, s, b, xpad);
  const int64_t len = static_cast<int64_t>(s.out_h - 1) * b.wp + s.out_w;
  acc.assign(static_cast<size_t>(s.out_h) * b.wp, bias);
  T* o = acc.data();
  for (int64_t k = 0; k < K; ++k) {
    const AxisTaps<T>& ta = taps[2 * k];
    const AxisTaps<T>& tb = taps[2 * k + 1];
    for (int i = 0; i < ta.count; ++i) {
      const int dr = ta.first + i;
      if (ta.value[i] == T(0) || !tap_hits(dr, s.h)) continue;
      for (int j = 0; j < tb.count; ++j) {
        const int dc = tb.first + j;
        if (tb.value[j] == T(0) || !tap_hits(dc, s.w)) continue;
        const T coef = w[k] * ta.value[i] * tb.value[j];
        const T* xs = xpad.data() + static_cast<int64_t>(b.top + dr) * b.wp + b.left + dc;
#pragma omp simd
        for (int64_t q = 0; q < len; ++q) o[q] += coef * xs[q];
      }
    }
  }
  for (int m = 0; m < s.out_h; ++m) {
    std::copy(o + static_cast<int64_t>(m) * b.wp, o + static_cast<int64_t>(m) * b.wp + s.out_w,
              out + static_cast<int64_t>(m) * s.out_w);
  }
}

// Backward of one plane's K synapses (weights w): input gradient into gx (if given), and
// per synapse (d/dw, w * d/dalpha, w * d/dbeta) into sums[3 * k ...].
template <typename T>
void flat_backward(const T* g, const T* x, T* gx, const PlaneShape& s, const AxisTaps<T>* taps,
                   int64_t K, const T* w, bool want_dots, T* sums, std::vector<T>& xpad,
                   std::vector<T>& gpad, std::vector<T>& gxpad) {
  const PadBox b = pad_box(taps, K, s);
  pad_into(x, s, b, xpad);
  gpad.assign(static_cast<size_t>(s.out_h) * b.wp, T(0));
  for (int m = 0; m < s.out_h; ++m) {
    std::copy(g + static_cast<int64_t>(m) * s.out_w, g + static_cast<int64_t>(m + 1) * s.out_w,
              gpad.data() + static_cast<int64_t>(m) * b.wp);
  }
  if (gx) gxpad.assign(static_cast<size_t>(b.hp) * b.wp, T(0));
  const int64_t len = static_cast<int64_t>(s.out_h - 1) * b.wp + s.out_w;
  const T* gp = gpad.data();
  for (int64_t k = 0; k < K; ++k) {
    const AxisTaps<T>& ta = taps[2 * k];
    const AxisTaps<T>& tb = taps[2 * k + 1];
    Read3<T> res{T(0), T(0), T(0)};
    for (int i = 0; i < ta.count; ++i) {
      const int dr = ta.first + i;
      if (!tap_hits(dr, s.h)) continue;
      for (int j = 0; j < tb.count; ++j) {
        const int dc = tb.first + j;
        if (!tap_hits(dc, s.w)) continue;
        const T cv = ta.value[i] * tb.value[j];
        const T ca = ta.slope[i] * tb.value[j];
        const T cb = ta.value[i] * tb.slope[j];
        const bool dot = want_dots && (cv != T(0) || ca != T(0) || cb != T(0));
        const bool scatter = gx != nullptr && cv != T(0);
        const int64_t off = static_cast<int64_t>(b.top + dr) * b.wp + b.left + dc;
        const T coef = w[k] * cv;
        T d = T(0);
        if (dot && scatter) {
          const T* xs = xpad.data() + off;
          T* gs = gxpad.data() + off;
#pragma omp simd reduction(+ : d)
          for (int64_t q = 0; q < len; ++q) {
            d += gp[q] * xs[q];
            gs[q] += coef * gp[q];
          }
        } else if (dot) {
          const T* xs = xpad.data() + off;
#pragma omp simd reduction(+ : d)
          for (int64_t q = 0; q < len; ++q) d += gp[q] * xs[q];
        } else if (scatter) {
          T* gs = gxpad.data() + off;
#pragma omp simd
          for (int64_t q = 0; q < len; ++q) gs[q] += coef * gp[q];
        }
        res.value += cv * d;
        res.d_alpha += ca * d;
        res.d_beta += cb * d;
      }
    }
    sums[3 * k] = res.value;
    sums[3 * k + 1] = w[k] * res.d_alpha;
    sums[3 * k + 2] = w[k] * res.d_beta;
  }
  if (gx) {
    for (int r = 0; r < s.h; ++r) {
      const T* src = gxpad.data() + static_cast<int64_t>(r + b.top) * b.wp + b.left;
      std::copy(src, src + s.w, gx + static_cast<int64_t>(r) * s.w);
    }
  }
}

struct CpuBackend {
  static int64_t columns_chunk(const Geometry&) { return 1; }  // one sample's columns at a time

  static at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& positions,
                                      const std::optional<at::Tensor>& bias, const Geometry& g) {
    at::Tensor out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_depthwise_forward_cpu", [&] {
      const auto taps = all_taps<scalar_t>(positions);
      const PlaneShape s = plane_shape(g);
      const scalar_t* x = input.const_data_ptr<scalar_t>();
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* y = out.mutable_data_ptr<scalar_t>();
      const int64_t C = g.c_in, K = g.synapses, per_set = g.c_out / g.sets;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const bool flat = s.sh == 1 && s.sw == 1;
      at::parallel_for(0, g.batch * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> xpad, acc;
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t c = idx % C, p = c / per_set;
          scalar_t* o = y + idx * out_plane;
          if (flat) {
            flat_forward(x + idx * in_plane, o, s, &taps[2 * p * K], K, w + c * K,
                         b ? b[c] : scalar_t(0), xpad, acc);
            continue;
          }
          std::fill(o, o + out_plane, b ? b[c] : scalar_t(0));
          for (int64_t k = 0; k < K; ++k) {
            sample_add(x + idx * in_plane, o, s, taps[2 * (p * K + k)], taps[2 * (p * K + k) + 1],
                       w[c * K + k]);
          }
        }
      });
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> depthwise_backward(
      const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
      const at::Tensor& positions, const Geometry& g, bool need_x, bool need_sums) {
    at::Tensor gx = need_x ? at::zeros_like(input) : at::Tensor();
    const int64_t C = g.c_in, K = g.synapses;
    at::Tensor partial = at::zeros({g.batch, C * K * 3}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_depthwise_backward_cpu", [&] {
      const auto taps = all_taps<scalar_t>(positions);
      const PlaneShape s = plane_shape(g);
      const scalar_t* x = input.const_data_ptr<scalar_t>();
      const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      scalar_t* gxp = need_x ? gx.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* part = partial.mutable_data_ptr<scalar_t>();
      const int64_t per_set = g.c_out / g.sets;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const bool flat = s.sh == 1 && s.sw == 1;
      at::parallel_for(0, g.batch * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> xpad, gpad, gxpad;
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t c = idx % C, p = c / per_set;
          if (flat) {
            flat_backward(go + idx * out_plane, x + idx * in_plane, gxp ? gxp + idx * in_plane : nullptr,
                          s, &taps[2 * p * K], K, w + c * K, need_sums, part + idx * K * 3, xpad, gpad,
                          gxpad);
            continue;
          }
          for (int64_t k = 0; k < K; ++k) {
            const scalar_t wk = w[c * K + k];
            const Read3<scalar_t> r = synapse_backward(
                go + idx * out_plane, x + idx * in_plane, gxp ? gxp + idx * in_plane : nullptr, s,
                taps[2 * (p * K + k)], taps[2 * (p * K + k) + 1], wk, need_sums);
            scalar_t* dst = part + (idx * K + k) * 3;
            dst[0] = r.value;
            dst[1] = wk * r.d_alpha;
            dst[2] = wk * r.d_beta;
          }
        }
      });
    });
    at::Tensor sums = need_sums ? reduce_rows(partial).view({C, K, 3}) : at::Tensor();
    return {gx, sums};
  }

  static void im2col(const at::Tensor& x, const at::Tensor& positions, at::Tensor& cols,
                     const Geometry& g) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "acu_im2col_cpu", [&] {
      const auto taps = all_taps<scalar_t>(positions);
      const PlaneShape s = plane_shape(g);
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* cp = cols.mutable_data_ptr<scalar_t>();
      const int64_t K = g.synapses, rows = g.c_per_group * K, nb = g.batch;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t units_per_group = g.units / g.groups, units_per_set = g.units / g.sets;
      at::parallel_for(0, g.units * rows * nb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx % nb, row = (idx / nb) % rows, u = idx / (nb * rows);
          const int64_t ci = row / K, k = row % K;
          const int64_t c = (u / units_per_group) * g.c_per_group + ci, p = u / units_per_set;
          scalar_t* dst = cp + idx * out_plane;
          std::fill(dst, dst + out_plane, scalar_t(0));
          sample_add(xp + (n * g.c_in + c) * in_plane, dst, s, taps[2 * (p * K + k)],
                     taps[2 * (p * K + k) + 1], scalar_t(1));
        }
      });
    });
  }

  static void col2im(const at::Tensor& gcols, const at::Tensor& positions, at::Tensor& gx,
                     const Geometry& g) {
    AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "acu_col2im_cpu", [&] {
      const auto taps = all_taps<scalar_t>(positions);
      const PlaneShape s = plane_shape(g);
      const scalar_t* gc = gcols.const_data_ptr<scalar_t>();
      scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
      const int64_t K = g.synapses, rows = g.c_per_group * K, nb = g.batch;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t units_per_group = g.units / g.groups, units_per_set = g.units / g.sets;
      // Each input plane is owned by one thread and summed in unit, synapse order.
      at::parallel_for(0, nb * g.c_in, 1, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx / g.c_in, c = idx % g.c_in;
          const int64_t group = c / g.c_per_group, ci = c % g.c_per_group;
          scalar_t* dst = gxp + idx * in_plane;
          std::fill(dst, dst + in_plane, scalar_t(0));
          for (int64_t u = group * units_per_group; u < (group + 1) * units_per_group; ++u) {
            const int64_t p = u / units_per_set;
            for (int64_t k = 0; k < K; ++k) {
              const scalar_t* src = gc + ((u * rows + ci * K + k) * nb + n) * out_plane;
              synapse_backward<scalar_t>(src, nullptr, dst, s, taps[2 * (p * K + k)],
                                         taps[2 * (p * K + k) + 1], scalar_t(1), false);
            }
          }
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
      const auto taps = all_taps<scalar_t>(positions);
      const PlaneShape s = plane_shape(g);
      const scalar_t* gc = gcols.const_data_ptr<scalar_t>();
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* part = partial.mutable_data_ptr<scalar_t>();
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t units_per_group = g.units / g.groups;
      at::parallel_for(0, g.units * rows * nb, 1, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t n = idx % nb, row = (idx / nb) % rows, u = idx / (nb * rows);
          const int64_t ci = row / K, k = row % K;
          const int64_t c = (u / units_per_group) * g.c_per_group + ci;
          const int64_t p = u / units_per_set, q = u % units_per_set;
          const Read3<scalar_t> r =
              synapse_backward<scalar_t>(gc + idx * out_plane, xp + (n * g.c_in + c) * in_plane,
                                         nullptr, s, taps[2 * (p * K + k)],
                                         taps[2 * (p * K + k) + 1], scalar_t(1), true);
          scalar_t* dst = part + ((n * units_per_set + q) * g.c_per_group + ci) * (g.sets * K * 2) +
                          (p * K + k) * 2;
          dst[0] = r.d_alpha;
          dst[1] = r.d_beta;
        }
      });
    });
    return partial;
  }

  // Column sums of a (R, M) tensor, each summed over rows in order: bitwise reproducible.
  static at::Tensor reduce_rows(const at::Tensor& partial_) {
    const at::Tensor partial = partial_.contiguous();
    const int64_t R = partial.size(0), M = partial.size(1);
    at::Tensor out = at::empty({M}, partial.options());
    AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "acu_reduce_rows_cpu", [&] {
      const scalar_t* src = partial.const_data_ptr<scalar_t>();
      scalar_t* dst = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
        for (int64_t m = begin; m < end; ++m) {
          scalar_t acc = 0;
          for (int64_t r = 0; r < R; ++r) acc += src[r * M + m];
          dst[m] = acc;
        }
      });
    });
    return out;
  }
};

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride, int64_t groups) {
  return forward<CpuBackend>(input, weight, positions, bias, stride, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& positions, at::IntArrayRef stride, int64_t groups, std::array<bool, 3> mask) {
  return backward<CpuBackend>(grad_out, input, weight, positions, stride, groups, mask);
}

}  // namespace
}  // namespace acu

TORCH_LIBRARY_IMPL(acuzoo, CPU, m) {
  m.impl("active_conv2d", &acu::forward_cpu);
  m.impl("active_conv2d_backward", &acu::backward_cpu);
}
