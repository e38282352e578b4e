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

// The output index m whose tap d reads input index i (i = m * s + d), or -1.
ACU_HD int output_index(int i, int d, int s, int out_size) {
  const int q = i - d;
  if (q < 0 || q % s != 0) return -1;
  const int m = q / s;
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
      const A x = static_cast<A>(plane[static_cast<int64_t>(rr) * width + cc]);
      out.value += ta.value[i] * tb.value[j] * x;
      out.d_alpha += ta.slope[i] * tb.value[j] * x;
      out.d_beta += ta.value[i] * tb.slope[j] * x;
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
template <typename A, typename S>
ACU_HD A gather_plane(const S* grad_plane, int out_h, int out_w, int sh, int sw, int r, int c,
                      const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  A out = A(0);
  for (int i = 0; i < ta.count; ++i) {
    const A wa = ta.value[i];
    if (wa == A(0)) continue;
    const int m = output_index(r, ta.first + i, sh, out_h);
    if (m < 0) continue;
    for (int j = 0; j < tb.count; ++j) {
      const A wb = tb.value[j];
      if (wb == A(0)) continue;
      const int n = output_index(c, tb.first + j, sw, out_w);
      if (n < 0) continue;
      out += wa * wb * static_cast<A>(grad_plane[static_cast<int64_t>(m) * out_w + n]);
    }
  }
  return out;
}

}  // namespace acu
