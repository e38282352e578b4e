// Per-element arithmetic of the ACU, written once for the CPU and CUDA kernels.
//
// A synapse at (alpha, beta) reads the input with the 1-D hat weights of each axis
// (floor-based bilinear interpolation, zero outside the image). Its derivative with
// respect to a coordinate follows DESIGN.md: -1 / +1 on the two neighbours between
// integers, and the mean of the one-sided derivatives on an integer, which reads the
// taps one beyond the support: (x[f+1] - x[f-1]) / 2.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ACU_HD __host__ __device__ __forceinline__
#else
#define ACU_HD inline
#endif

namespace acu {

// The taps of one axis: displacements first .. first + count - 1, with their hat
// weights (value) and the derivatives of those weights with respect to the coordinate.
template <typename A>
struct AxisTaps {
  int first;
  int count;  // 2 between integers; 3 on an integer (the slope reads both neighbours)
  A value[3];
  A slope[3];
};

ACU_HD float floor_of(float v) { return floorf(v); }
ACU_HD double floor_of(double v) { return floor(v); }

template <typename A>
ACU_HD AxisTaps<A> axis_taps(A coord) {
  AxisTaps<A> taps;
  const A f = floor_of(coord);
  const A t = coord - f;
  if (t == A(0)) {
    taps.first = static_cast<int>(f) - 1;
    taps.count = 3;
    taps.value[0] = A(0);
    taps.value[1] = A(1);
    taps.value[2] = A(0);
    taps.slope[0] = A(-0.5);
    taps.slope[1] = A(0);
    taps.slope[2] = A(0.5);
  } else {
    taps.first = static_cast<int>(f);
    taps.count = 2;
    taps.value[0] = A(1) - t;
    taps.value[1] = t;
    taps.value[2] = A(0);
    taps.slope[0] = A(-1);
    taps.slope[1] = A(1);
    taps.slope[2] = A(0);
  }
  return taps;
}

// Output positions jj in [first_valid, end_valid) read index jj * s + d inside [0, size).
ACU_HD int first_valid(int d, int s) { return d >= 0 ? 0 : (-d + s - 1) / s; }

ACU_HD int end_valid(int d, int s, int size, int out_size) {
  if (size - d <= 0) return 0;
  const int end = (size - d - 1) / s + 1;
  return end < out_size ? end : out_size;
}

// The output index m whose tap d reads input index i (i = m * s + d), or -1. ST > 0 fixes
// the stride at compile time (a GPU's integer division by a runtime value is slow).
template <int ST = 0>
ACU_HD int output_index(int i, int d, int s, int out_size) {
  const int st = ST > 0 ? ST : s;
  const int q = i - d;
  if (q < 0 || q % st != 0) return -1;
  const int m = q / st;
  return m < out_size ? m : -1;
}

// Bilinear read of one plane at (r + alpha, c + beta): value, d/dalpha and d/dbeta.
template <typename A>
struct Read3 {
  A value;
  A d_alpha;
  A d_beta;
};

template <typename A, typename S>
ACU_HD Read3<A> read_plane(const S* plane, int height, int width, int r, int c,
                           const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  Read3<A> out{A(0), A(0), A(0)};
  for (int i = 0; i < ta.count; ++i) {
    const int rr = r + ta.first + i;
    if (rr < 0 || rr >= height) continue;
    for (int j = 0; j < tb.count; ++j) {
      const int cc = c + tb.first + j;
      if (cc < 0 || cc >= width) continue;
      const A cv = ta.value[i] * tb.value[j];
      const A ca = ta.slope[i] * tb.value[j];
      const A cb = ta.value[i] * tb.slope[j];
      if (cv == A(0) && ca == A(0) && cb == A(0)) continue;  // the corners of an integer tap
      const A x = static_cast<A>(plane[static_cast<int64_t>(rr) * width + cc]);
      out.value += cv * x;
      out.d_alpha += ca * x;
      out.d_beta += cb * x;
    }
  }
  return out;
}

// Value only (forward, im2col): skips the zero-weight taps of an integer coordinate.
template <typename A, typename S>
ACU_HD A read_value(const S* plane, int height, int width, int r, int c,
                    const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  A out = A(0);
  for (int i = 0; i < ta.count; ++i) {
    const A wa = ta.value[i];
    const int rr = r + ta.first + i;
    if (wa == A(0) || rr < 0 || rr >= height) continue;
    for (int j = 0; j < tb.count; ++j) {
      const A wb = tb.value[j];
      const int cc = c + tb.first + j;
      if (wb == A(0) || cc < 0 || cc >= width) continue;
      out += wa * wb * static_cast<A>(plane[static_cast<int64_t>(rr) * width + cc]);
    }
  }
  return out;
}

// Transposed read (input gradient, col2im) as a gather: the sum over the outputs whose
// synapse reads input (r, c) of their gradient times the bilinear weight.
template <typename A, typename S, int ST = 0>
ACU_HD A gather_plane(const S* grad_plane, int out_h, int out_w, int sh, int sw, int r, int c,
                      const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  A out = A(0);
  for (int i = 0; i < ta.count; ++i) {
    const A wa = ta.value[i];
    if (wa == A(0)) continue;
    const int m = output_index<ST>(r, ta.first + i, sh, out_h);
    if (m < 0) continue;
    for (int j = 0; j < tb.count; ++j) {
      const A wb = tb.value[j];
      if (wb == A(0)) continue;
      const int n = output_index<ST>(c, tb.first + j, sw, out_w);
      if (n < 0) continue;
      out += wa * wb * static_cast<A>(grad_plane[static_cast<int64_t>(m) * out_w + n]);
    }
  }
  return out;
}

// ---- one output or input element of each kernel -------------------------------------
// The CUDA kernels are these functions plus launch and reduction code; the CPU "twin"
// (acu_twin.cpp) loops over the same functions, so their arithmetic and indexing are
// tested against the reference on machines without a GPU.

struct Dims {
  int64_t C, H, W, Ho, Wo, K;  // C: input channels
  int sh, sw;
  int64_t per_set;  // output channels per position set
};

// Columns layout: (n, unit, ci * K + k, pixel), i.e. a (nb, U * rows, Ho, Wo) image whose
// grouped 1x1 convolution is the ACU; a unit reads one group with one set.
struct Units {
  int64_t units, per_group, per_set, c_per_group, rows, batch;
};

template <typename A>
ACU_HD void synapse_taps(const A* pos, int64_t p, int64_t k, int64_t K, AxisTaps<A>& ta, AxisTaps<A>& tb) {
  ta = axis_taps<A>(pos[(p * K + k) * 2]);
  tb = axis_taps<A>(pos[(p * K + k) * 2 + 1]);
}

// ---- depthwise: one plane (sample n, channel c) at a time ----------------------------
// A kernel block (or the twin's loop) works inside one plane or one channel, so it turns
// the channel's positions into taps once (synapse_taps_of) and every element reads them.

// Synapses whose weight/position sums one GPU thread keeps in registers at a time.
constexpr int kSynapseGroup = 9;

template <typename A>
struct TapPair {
  AxisTaps<A> a;  // rows
  AxisTaps<A> b;  // columns
};

template <typename A>
ACU_HD TapPair<A> synapse_taps_of(const A* pos, int64_t p, int64_t k, int64_t K) {
  return {axis_taps<A>(pos[(p * K + k) * 2]), axis_taps<A>(pos[(p * K + k) * 2 + 1])};
}

// Depthwise forward at output (m, j) of one plane: xp is the input plane, w and taps the
// channel's K weights and synapses.
template <typename A, typename S>
ACU_HD A dw_forward_at(const S* xp, const A* w, const TapPair<A>* taps, const Dims& d, int m, int j) {
  A acc = A(0);
  for (int k = 0; k < static_cast<int>(d.K); ++k) {
    acc += w[k] * read_value<A>(xp, static_cast<int>(d.H), static_cast<int>(d.W), m * d.sh, j * d.sw,
                                taps[k].a, taps[k].b);
  }
  return acc;
}

// Depthwise input gradient at input (r, c) of one plane, as a gather from the plane's
// output gradient gp. ST > 0: both strides are ST.
template <int ST, typename A, typename S>
ACU_HD A dw_grad_input_at(const S* gp, const A* w, const TapPair<A>* taps, const Dims& d, int r, int c) {
  A acc = A(0);
  for (int k = 0; k < static_cast<int>(d.K); ++k) {
    acc += w[k] * gather_plane<A, S, ST>(gp, static_cast<int>(d.Ho), static_cast<int>(d.Wo), d.sh, d.sw, r, c,
                                         taps[k].a, taps[k].b);
  }
  return acc;
}

// Depthwise weight/position terms of output (m, j) of one plane with output gradient g:
// adds g times (value read, d/dalpha read, d/dbeta read) of synapses k0 .. k0 + KG - 1
// (those below K) to acc. KG is fixed so that acc lives in registers on the GPU.
template <int KG, typename A, typename S>
ACU_HD void dw_param_terms_at(const S* xp, const TapPair<A>* taps, const Dims& d, int k0, int m, int j, A g,
                              A (&acc)[KG][3]) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int kk = 0; kk < KG; ++kk) {
    if (k0 + kk >= static_cast<int>(d.K)) break;
    const TapPair<A>& t = taps[k0 + kk];
    const Read3<A> r = read_plane<A>(xp, static_cast<int>(d.H), static_cast<int>(d.W), m * d.sh, j * d.sw, t.a, t.b);
    acc[kk][0] += g * r.value;
    acc[kk][1] += g * r.d_alpha;
    acc[kk][2] += g * r.d_beta;
  }
}

// Columns element idx of (nb, U, rows, Ho * Wo).
template <typename A, typename S>
ACU_HD A im2col_element(const S* x, const A* pos, int64_t idx, const Dims& d, const Units& u) {
  const int64_t pixels = d.Ho * d.Wo;
  const int64_t pix = idx % pixels;
  const int64_t block = idx / pixels;  // (n * U + unit) * rows + row
  const int64_t row = block % u.rows, unit = (block / u.rows) % u.units, n = block / (u.rows * u.units);
  const int64_t ci = row / d.K, k = row % d.K;
  const int64_t c = (unit / u.per_group) * u.c_per_group + ci, p = unit / u.per_set;
  AxisTaps<A> ta, tb;
  synapse_taps(pos, p, k, d.K, ta, tb);
  const int m = static_cast<int>(pix / d.Wo), j = static_cast<int>(pix % d.Wo);
  return read_value<A>(x + (n * d.C + c) * d.H * d.W, static_cast<int>(d.H), static_cast<int>(d.W), m * d.sh,
                       j * d.sw, ta, tb);
}

// Input-gradient element idx of (nb, C, H, W) from the columns' gradient, as a gather.
template <typename A, typename S>
ACU_HD A col2im_element(const S* gcols, const A* pos, int64_t idx, const Dims& d, const Units& u) {
  const int64_t pixels = d.Ho * d.Wo;
  const int col = static_cast<int>(idx % d.W);
  const int r = static_cast<int>((idx / d.W) % d.H);
  const int64_t c = (idx / (d.W * d.H)) % d.C, n = idx / (d.W * d.H * d.C);
  const int64_t group = c / u.c_per_group, ci = c % u.c_per_group;
  A acc = A(0);
  for (int64_t unit = group * u.per_group; unit < (group + 1) * u.per_group; ++unit) {
    const int64_t p = unit / u.per_set;
    for (int64_t k = 0; k < d.K; ++k) {
      AxisTaps<A> ta, tb;
      synapse_taps(pos, p, k, d.K, ta, tb);
      const S* src = gcols + ((n * u.units + unit) * u.rows + ci * d.K + k) * pixels;
      acc += gather_plane<A>(src, static_cast<int>(d.Ho), static_cast<int>(d.Wo), d.sh, d.sw, r, col, ta, tb);
    }
  }
  return acc;
}

// Position terms of one columns-gradient element: row block = (n * U + unit) * rows + row
// of the columns, pixel pix; returns (grad * d/dalpha read, grad * d/dbeta read).
template <typename A, typename S>
ACU_HD Read3<A> position_terms(const S* gcols, const S* x, const A* pos, int64_t block, int64_t pix,
                               const Dims& d, const Units& u) {
  const int64_t row = block % u.rows, unit = (block / u.rows) % u.units;
  const int64_t n = block / (u.rows * u.units);
  const int64_t ci = row / d.K, k = row % d.K;
  const int64_t c = (unit / u.per_group) * u.c_per_group + ci;
  AxisTaps<A> ta, tb;
  synapse_taps(pos, unit / u.per_set, k, d.K, ta, tb);
  const int m = static_cast<int>(pix / d.Wo), j = static_cast<int>(pix % d.Wo);
  const A g = static_cast<A>(gcols[block * d.Ho * d.Wo + pix]);
  const Read3<A> r = read_plane<A>(x + (n * d.C + c) * d.H * d.W, static_cast<int>(d.H), static_cast<int>(d.W),
                                   m * d.sh, j * d.sw, ta, tb);
  return {A(0), g * r.d_alpha, g * r.d_beta};
}

// Where position_terms' sums go: partial row (n, q, ci) for unit = p * per_set + q,
// column (p, k, axis) of a (rows, P * K * 2) table.
ACU_HD int64_t position_slot(int64_t block, const Dims& d, const Units& u, int64_t sets) {
  const int64_t row = block % u.rows, unit = (block / u.rows) % u.units;
  const int64_t n = block / (u.rows * u.units);
  const int64_t ci = row / d.K, k = row % d.K;
  const int64_t p = unit / u.per_set, q = unit % u.per_set;
  return ((n * u.per_set + q) * u.c_per_group + ci) * (sets * d.K * 2) + (p * d.K + k) * 2;
}

}  // namespace acu
