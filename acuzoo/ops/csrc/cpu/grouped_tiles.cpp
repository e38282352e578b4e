// The grouped and shared ACU on the CPU by tiles (cpu.grouped_tiles), channels-last:
// bilinear columns of a few output rows at a time, kept in cache and contracted by GEMM at
// once, forward and backward; the whole columns buffer of the batch (N x C_in*K x H*W) is
// never built.
//
// A tile is a band of output rows of one sample. Its columns, one row per output pixel
// holding (synapse, input channel) reads, fit in L2; one GEMM per unit contracts them
// with the weight: forward out = cols @ W^T; backward gcols = grad_out @ W, scattered
// back to the input and dotted with the slope reads for the positions, and
// grad_W += grad_out^T @ cols. Channels-last makes every bilinear tap a contiguous run
// of channels: the taps of a pixel are fused in one vector loop with no edge masks,
// whatever the stride.
// The forward splits the work by tile. The backward gives each task whole samples (no
// two tasks write the same input gradient) in a fixed number of sample ranges, whose
// weight/position sums are then added in range order: bitwise reproducible.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/math.h"
#include "kernels.h"
#include "taps.h"

namespace acu {
namespace {

// Columns per tile: 128 Ki elements, 512 KiB in float32, so that a tile's columns and its
// gradient stay in a core's L2 between their GEMM and the passes that read them.
constexpr int64_t kTileElements = int64_t(128) << 10;
// Weight/position gradients are summed per range of samples; a fixed count keeps the
// summation order independent of the thread count (up to this many threads).
constexpr int64_t kMinSampleRanges = 16;

struct Tiling {
  int64_t rows_per_tile, tiles;
};

Tiling tiling(const Geometry& g) {
  const int64_t col_width = g.c_per_group * g.synapses;
  const int64_t r = std::clamp<int64_t>(kTileElements / std::max<int64_t>(1, col_width * g.out_w), 1, g.out_h);
  return {r, (g.out_h + r - 1) / r};
}

int64_t sample_ranges(const Geometry& g) {
  return std::min<int64_t>(g.batch, std::max<int64_t>(kMinSampleRanges, at::get_num_threads()));
}

// A sample copied channels-last into a zero border wide enough for every tap that reads
// inside the plane (taps that never do are dropped): reads need no bounds checks, and a
// tap's read of one pixel is a run of channels at a fixed offset from the pixel.
struct Padded {
  int top, left, hp, wp;
  int64_t channels;
  int64_t size() const { return static_cast<int64_t>(hp) * wp * channels; }
  // Offset of output (m, q)'s own pixel, with the strides of the layer.
  int64_t pixel(int r, int c) const { return (static_cast<int64_t>(r + top) * wp + c + left) * channels; }
};

inline bool axis_hits(int d, int size, int out_size, int stride) {
  return d <= size - 1 && (out_size - 1) * stride + d >= 0;
}

template <typename T>
Padded padding_for(const at::Tensor& positions, const Geometry& g) {
  const int64_t n = positions.numel();
  const T* pos = positions.const_data_ptr<T>();
  int rmin = 0, rmax = 0, cmin = 0, cmax = 0;
  for (int64_t i = 0; i < n; ++i) {
    const AxisTaps<T> taps = axis_taps<T>(pos[i]);
    for (int t = 0; t < taps.count; ++t) {
      const int d = taps.first + t;
      if (i % 2 == 0 && axis_hits(d, g.height, g.out_h, g.stride_h)) rmin = std::min(rmin, d), rmax = std::max(rmax, d);
      if (i % 2 == 1 && axis_hits(d, g.width, g.out_w, g.stride_w)) cmin = std::min(cmin, d), cmax = std::max(cmax, d);
    }
  }
  Padded p;
  p.top = -rmin;
  p.left = -cmin;
  p.hp = p.top + std::max<int>(g.height, (g.out_h - 1) * g.stride_h + rmax + 1);
  p.wp = p.left + std::max<int>(g.width, (g.out_w - 1) * g.stride_w + cmax + 1);
  p.channels = g.c_in;
  return p;
}

// dst (padded, zero border) <- one sample of x with strides st.
template <typename T>
void pad_sample(const T* x, const Strides& st, const Geometry& g, const Padded& p, T* dst) {
  const int64_t C = g.c_in;
  for (int r = 0; r < g.height; ++r) {
    T* row = dst + p.pixel(r, 0);
    const T* src = x + r * st.h;
    if (st.c == 1) {  // channels-last: rows are runs
      for (int c = 0; c < g.width; ++c) std::copy(src + c * st.w, src + c * st.w + C, row + c * C);
    } else {
      for (int64_t ch = 0; ch < C; ++ch) {
        for (int c = 0; c < g.width; ++c) row[c * C + ch] = src[ch * st.c + c * st.w];
      }
    }
  }
}

// x (one sample, strides st) <- the interior of a padded buffer.
template <typename T>
void unpad_sample(const T* src, const Geometry& g, const Padded& p, const Strides& st, T* x) {
  const int64_t C = g.c_in;
  for (int r = 0; r < g.height; ++r) {
    const T* row = src + p.pixel(r, 0);
    T* dst = x + r * st.h;
    if (st.c == 1) {
      for (int c = 0; c < g.width; ++c) std::copy(row + c * C, row + (c + 1) * C, dst + c * st.w);
    } else {
      for (int64_t ch = 0; ch < C; ++ch) {
        for (int c = 0; c < g.width; ++c) dst[ch * st.c + c * st.w] = row[c * C + ch];
      }
    }
  }
}

// A synapse's bilinear taps as offsets in a padded buffer from the reading pixel: value
// taps (cv != 0, at most 4) and slope taps (d/dalpha or d/dbeta != 0, at most 6).
template <typename T>
struct SynapseTaps {
  int values, slopes;
  int64_t value_off[4], slope_off[6];
  T cv[4], ca[6], cb[6];
};

template <typename T>
std::vector<SynapseTaps<T>> synapse_taps(const at::Tensor& positions, const Geometry& g, const Padded& p) {
  const int64_t n = positions.numel() / 2;
  const T* pos = positions.const_data_ptr<T>();
  std::vector<SynapseTaps<T>> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const AxisTaps<T> ta = axis_taps<T>(pos[2 * i]), tb = axis_taps<T>(pos[2 * i + 1]);
    SynapseTaps<T>& st = out[i];
    st.values = st.slopes = 0;
    for (int a = 0; a < ta.count; ++a) {
      const int dr = ta.first + a;
      if (!axis_hits(dr, g.height, g.out_h, g.stride_h)) continue;
      for (int b = 0; b < tb.count; ++b) {
        const int dc = tb.first + b;
        if (!axis_hits(dc, g.width, g.out_w, g.stride_w)) continue;
        const int64_t off = (static_cast<int64_t>(dr) * p.wp + dc) * p.channels;
        const T cv = ta.value[a] * tb.value[b], ca = ta.slope[a] * tb.value[b], cb = ta.value[a] * tb.slope[b];
        if (cv != T(0)) st.value_off[st.values] = off, st.cv[st.values++] = cv;
        if (ca != T(0) || cb != T(0)) {
          st.slope_off[st.slopes] = off, st.ca[st.slopes] = ca, st.cb[st.slopes++] = cb;
        }
      }
    }
  }
  return out;
}

// dst[i] = sum over taps t < N of c[t] * src[t][i], i < n (N fixed: one fused loop).
template <typename T, int N>
inline void combine(T* __restrict dst, const T* const* src, const T* c, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T v = T(0);
#pragma GCC unroll 4
    for (int t = 0; t < N; ++t) v += c[t] * src[t][i];
    dst[i] = v;
  }
}

// dst[i] = one synapse's read of channel run i < cpg, from the reading pixel's place at.
template <typename T>
inline void read_synapse(const T* at, const SynapseTaps<T>& st, int64_t cpg, T* dst) {
  const T* src[4] = {at + st.value_off[0], at + st.value_off[1], at + st.value_off[2], at + st.value_off[3]};
  switch (st.values) {
    case 0: std::fill(dst, dst + cpg, T(0)); break;
    case 1: combine<T, 1>(dst, src, st.cv, cpg); break;
    case 2: combine<T, 2>(dst, src, st.cv, cpg); break;
    case 3: combine<T, 3>(dst, src, st.cv, cpg); break;
    default: combine<T, 4>(dst, src, st.cv, cpg);
  }
}

// Columns of one unit for output rows [m0, m1): row (pixel) p holds K runs of cpg reads.
template <typename T>
void fill_columns(const T* padded, const Padded& p, const Geometry& g, const SynapseTaps<T>* taps, int64_t c0,
                  int m0, int m1, T* cols) {
  const int64_t cpg = g.c_per_group, K = g.synapses;
  for (int m = m0; m < m1; ++m) {
    for (int q = 0; q < g.out_w; ++q) {
      const T* base = padded + p.pixel(m * g.stride_h, q * g.stride_w) + c0;
      T* row = cols + (static_cast<int64_t>(m - m0) * g.out_w + q) * K * cpg;
      for (int64_t k = 0; k < K; ++k) read_synapse(base, taps[k], cpg, row + k * cpg);
    }
  }
}

// gx[t][i] += c[t] * g[i] for taps t < N (distinct pixels).
template <typename T, int N>
inline void scatter(const T* __restrict g, T* const* gx, const T* c, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
#pragma GCC unroll 4
    for (int t = 0; t < N; ++t) gx[t][i] += c[t] * g[i];
  }
}

// acc[t][i] += g[i] * x[t][i] for slope taps t < N.
template <typename T, int N>
inline void dot_rows(const T* __restrict g, const T* const* x, T* __restrict acc, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
#pragma GCC unroll 6
    for (int t = 0; t < N; ++t) acc[t * n + i] += g[i] * x[t][i];
  }
}

// One pixel's backward of one synapse (x, gx: the pixel's own place in the padded
// buffers): its transposed read of g into gx, per slope tap running products of g with
// the tap's read (acc: slopes x cpg), and, with col, its columns entry for the weight
// gradient (the same reads, while they are in L1).
template <typename T>
void pixel_backward(const T* g, const T* x, T* gx, const SynapseTaps<T>& st, int64_t cpg, T* acc, T* col) {
  if (col != nullptr) read_synapse(x, st, cpg, col);
  if (gx != nullptr) {
    T* dst[4] = {gx + st.value_off[0], gx + st.value_off[1], gx + st.value_off[2], gx + st.value_off[3]};
    switch (st.values) {
      case 0: break;
      case 1: scatter<T, 1>(g, dst, st.cv, cpg); break;
      case 2: scatter<T, 2>(g, dst, st.cv, cpg); break;
      case 3: scatter<T, 3>(g, dst, st.cv, cpg); break;
      default: scatter<T, 4>(g, dst, st.cv, cpg);
    }
  }
  if (acc == nullptr) return;
  const T* src[6];
  for (int t = 0; t < st.slopes; ++t) src[t] = x + st.slope_off[t];
  switch (st.slopes) {
    case 0: break;
    case 1: dot_rows<T, 1>(g, src, acc, cpg); break;
    case 2: dot_rows<T, 2>(g, src, acc, cpg); break;
    case 3: dot_rows<T, 3>(g, src, acc, cpg); break;
    case 4: dot_rows<T, 4>(g, src, acc, cpg); break;
    case 5: dot_rows<T, 5>(g, src, acc, cpg); break;
    default: dot_rows<T, 6>(g, src, acc, cpg);
  }
}

// Where one unit (one group read with one position set) of the layer reads and writes.
struct Unit {
  int64_t first_in_channel, set, first_out_channel;
};

Unit unit_of(const Geometry& g, int64_t u) {
  const int64_t per_group = g.units / g.groups, per_set = g.units / g.sets;
  return {(u / per_group) * g.c_per_group, u / per_set, u * (g.c_out / g.units)};
}

// A (rows x cols) matrix at ptr with row stride ld, as a tensor for at::mm: wrapping raw
// pointers keeps autograd and the caller's tensors out of the GEMMs.
template <typename T>
at::Tensor matrix(const T* ptr, int64_t rows, int64_t cols, int64_t ld) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  return at::from_blob(const_cast<T*>(ptr), {rows, cols}, {ld, 1}, opts);
}

// Column sums of (R, M) rows in row order, parallel over columns: bitwise reproducible.
template <typename T>
void sum_rows_in_order(const T* src, int64_t R, int64_t M, T* dst) {
  at::parallel_for(0, M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      T acc = T(0);
      for (int64_t r = 0; r < R; ++r) acc += src[r * M + m];
      dst[m] = acc;
    }
  });
}

// Rows: a tile's pixels (output rows [m0, m0 + npix / out_w)); columns: channels
// [c0, c0 + count) of one sample of an output-shaped tensor, in its own format.
template <typename T>
at::Tensor pixels_by_channels(T* sample, const Strides& st, const Geometry& g, int m0, int64_t npix, int64_t c0,
                              int64_t count) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // Pixels of whole rows are evenly spaced in both formats: stride w (= C or 1).
  return at::from_blob(sample + m0 * st.h + c0 * st.c, {npix, count}, {st.w, st.c}, opts);
}

// The weight as (C_out, K, C_in/groups): a pixel's columns run over channels per synapse.
at::Tensor synapse_major(const at::Tensor& weight) { return weight.transpose(1, 2).contiguous(); }

at::Tensor tiles_forward(const at::Tensor& input_, const at::Tensor& weight, const at::Tensor& positions,
                         const std::optional<at::Tensor>& bias, const Geometry& g) {
  const at::MemoryFormat format = memory_format_of(input_);
  const at::Tensor input = input_.contiguous(format);
  at::Tensor out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options().memory_format(format));
  const at::Tensor w_sk = synapse_major(weight);
  const Tiling t = tiling(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_tiles_forward_cpu", [&] {
    using T = scalar_t;
    const Padded pad = padding_for<T>(positions, g);
    const auto taps = synapse_taps<T>(positions, g, pad);
    const Strides xs = sample_strides(input), ys = sample_strides(out);
    const T* x = input.const_data_ptr<T>();
    const T* w = w_sk.const_data_ptr<T>();
    T* y = out.mutable_data_ptr<T>();
    const int64_t col_width = g.c_per_group * g.synapses, per_unit = g.c_out / g.units;
    at::parallel_for(0, g.batch * t.tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> cols(col_width * t.rows_per_tile * g.out_w), padded(pad.size(), T(0));
      int64_t padded_sample = -1;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / t.tiles;
        if (n != padded_sample) pad_sample(x + n * input.stride(0), xs, g, pad, padded.data()), padded_sample = n;
        const int m0 = static_cast<int>((item % t.tiles) * t.rows_per_tile);
        const int m1 = static_cast<int>(std::min<int64_t>(g.out_h, m0 + t.rows_per_tile));
        const int64_t npix = static_cast<int64_t>(m1 - m0) * g.out_w;
        for (int64_t u = 0; u < g.units; ++u) {
          const Unit un = unit_of(g, u);
          fill_columns(padded.data(), pad, g, &taps[un.set * g.synapses], un.first_in_channel, m0, m1, cols.data());
          at::Tensor o = pixels_by_channels(y + n * out.stride(0), ys, g, m0, npix, un.first_out_channel, per_unit);
          at::mm_out(o, matrix(cols.data(), npix, col_width, col_width),
                     matrix(w + un.first_out_channel * col_width, per_unit, col_width, col_width).t());
        }
      }
    });
  });
  if (bias.has_value()) out.add_(bias->view({1, g.c_out, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tiles_backward(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                              const at::Tensor& weight,
                                                              const at::Tensor& positions, const Geometry& g,
                                                              std::array<bool, 3> mask) {
  const bool need_x = mask[0], need_w = mask[1], need_pos = mask[2];
  const at::MemoryFormat format = memory_format_of(input_);
  const at::Tensor input = input_.contiguous(format);
  const at::Tensor grad_out = grad_out_.contiguous(format);
  const at::Tensor w_sk = synapse_major(weight);
  const int64_t col_width = g.c_per_group * g.synapses, per_unit = g.c_out / g.units, K = g.synapses;
  const int64_t cpg = g.c_per_group;
  const int64_t ranges = sample_ranges(g);
  const Tiling t = tiling(g);
  at::Tensor grad_x = need_x ? at::empty_like(input, format) : at::Tensor();
  at::Tensor gw_ranges = need_w ? at::zeros({ranges, g.c_out * col_width}, input.options()) : at::Tensor();
  at::Tensor pos_ranges = need_pos ? at::zeros({ranges, g.sets * K * 2}, input.options()) : at::Tensor();
  at::Tensor grad_w, grad_pos;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_tiles_backward_cpu", [&] {
    using T = scalar_t;
    const Padded pad = padding_for<T>(positions, g);
    const auto taps = synapse_taps<T>(positions, g, pad);
    const Strides xs = sample_strides(input), gs = sample_strides(grad_out);
    const T* x = input.const_data_ptr<T>();
    T* go = const_cast<T*>(grad_out.const_data_ptr<T>());
    const T* w = w_sk.const_data_ptr<T>();
    T* gx = need_x ? grad_x.mutable_data_ptr<T>() : nullptr;
    at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
      const int64_t tile_elems = col_width * t.rows_per_tile * g.out_w;
      std::vector<T> cols(need_w ? tile_elems : 0), gcols(need_x || need_pos ? tile_elems : 0);
      std::vector<T> padded(pad.size(), T(0)), gx_padded(need_x ? pad.size() : 0);
      std::vector<T> acc(need_pos ? K * 6 * cpg : 0);  // per synapse and slope tap, per channel
      for (int64_t range = begin; range < end; ++range) {
        T* gw = need_w ? gw_ranges.mutable_data_ptr<T>() + range * g.c_out * col_width : nullptr;
        T* gp = need_pos ? pos_ranges.mutable_data_ptr<T>() + range * g.sets * K * 2 : nullptr;
        const int64_t n_begin = range * g.batch / ranges, n_end = (range + 1) * g.batch / ranges;
        for (int64_t n = n_begin; n < n_end; ++n) {
          pad_sample(x + n * input.stride(0), xs, g, pad, padded.data());
          if (need_x) std::fill(gx_padded.begin(), gx_padded.end(), T(0));
          for (int64_t tile = 0; tile < t.tiles; ++tile) {
            const int m0 = static_cast<int>(tile * t.rows_per_tile);
            const int m1 = static_cast<int>(std::min<int64_t>(g.out_h, m0 + t.rows_per_tile));
            const int64_t npix = static_cast<int64_t>(m1 - m0) * g.out_w;
            for (int64_t u = 0; u < g.units; ++u) {
              const Unit un = unit_of(g, u);
              const SynapseTaps<T>* set_taps = &taps[un.set * K];
              const at::Tensor go_tile =
                  pixels_by_channels(go + n * grad_out.stride(0), gs, g, m0, npix, un.first_out_channel, per_unit);
              if (need_w && !need_x && !need_pos) {
                fill_columns(padded.data(), pad, g, set_taps, un.first_in_channel, m0, m1, cols.data());
              }
              if (need_x || need_pos) {
                at::Tensor gc = matrix(gcols.data(), npix, col_width, col_width);
                at::mm_out(gc, go_tile, matrix(w + un.first_out_channel * col_width, per_unit, col_width, col_width));
                if (need_pos) std::fill(acc.begin(), acc.end(), T(0));
                for (int m = m0; m < m1; ++m) {
                  for (int q = 0; q < g.out_w; ++q) {
                    const int64_t at_pixel = pad.pixel(m * g.stride_h, q * g.stride_w) + un.first_in_channel;
                    const int64_t p = static_cast<int64_t>(m - m0) * g.out_w + q;
                    for (int64_t k = 0; k < K; ++k) {
                      pixel_backward(gcols.data() + p * col_width + k * cpg, padded.data() + at_pixel,
                                     need_x ? gx_padded.data() + at_pixel : nullptr, set_taps[k], cpg,
                                     need_pos ? acc.data() + k * 6 * cpg : nullptr,
                                     need_w ? cols.data() + p * col_width + k * cpg : nullptr);
                    }
                  }
                }
              }
              if (need_w) {
                at::Tensor gw_unit = matrix(gw + un.first_out_channel * col_width, per_unit, col_width, col_width);
                at::addmm_out(gw_unit, gw_unit, go_tile.t(), matrix(cols.data(), npix, col_width, col_width));
              }
              if (!need_pos) continue;
              // This unit's share of the position gradient, summed in (synapse, tap, channel) order.
              for (int64_t k = 0; k < K; ++k) {
                const SynapseTaps<T>& st = set_taps[k];
                T da = T(0), db = T(0);
                for (int tp = 0; tp < st.slopes; ++tp) {
                  const T* a = acc.data() + (k * 6 + tp) * cpg;
                  T d = T(0);
                  for (int64_t i = 0; i < cpg; ++i) d += a[i];
                  da += st.ca[tp] * d;
                  db += st.cb[tp] * d;
                }
                gp[(un.set * K + k) * 2] += da;
                gp[(un.set * K + k) * 2 + 1] += db;
              }
            }
          }
          if (need_x) unpad_sample(gx_padded.data(), g, pad, xs, gx + n * grad_x.stride(0));
        }
      }
    });
    if (need_w) {
      // Summed in the (C_out, K, cpg) layout of the GEMMs, returned as (C_out, cpg, K).
      at::Tensor gw_sk = at::empty({g.c_out, K, cpg}, input.options());
      sum_rows_in_order(gw_ranges.const_data_ptr<T>(), ranges, g.c_out * col_width, gw_sk.mutable_data_ptr<T>());
      grad_w = gw_sk.transpose(1, 2).contiguous();
    }
    if (need_pos) {
      grad_pos = at::empty({g.sets, K, 2}, input.options());
      sum_rows_in_order(pos_ranges.const_data_ptr<T>(), ranges, g.sets * K * 2, grad_pos.mutable_data_ptr<T>());
    }
  });
  return {grad_x, grad_w, grad_pos};
}

}  // namespace

namespace cpu {

at::Tensor grouped_tiles_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                 const std::optional<at::Tensor>& bias, const Geometry& g) {
  return tiles_forward(input, weight, positions, bias, g);
}

Gradients grouped_tiles_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                 const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  return tiles_backward(grad_out, input, weight, positions, g, mask);
}

}  // namespace cpu
}  // namespace acu
