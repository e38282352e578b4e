// Planes split into their stride phases and zero-padded, so that every integer tap of a
// synapse is one flat loop over a whole plane: the helpers of the depthwise planes kernels
// (depthwise_planes.cpp) and of the CPU columns (columns.cpp).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "../common/geometry.h"
#include "../common/math.h"
#include "taps.h"

namespace acu {

struct PlaneShape {
  int h, w, out_h, out_w, sh, sw;
};

inline PlaneShape plane_shape(const Geometry& g) {
  return {static_cast<int>(g.height), static_cast<int>(g.width), static_cast<int>(g.out_h),
          static_cast<int>(g.out_w), static_cast<int>(g.stride_h), static_cast<int>(g.stride_w)};
}

// ---- polyphase padded planes: one flat loop per tap ---------------------------------
// A tap (dr, dc) of output (m, n) reads x[m*sh + dr, n*sw + dc]. Split x into its sh x sw
// phases, x_ph[r', c'] = x[r'*sh + rp, c'*sw + cp], each zero-padded to hq x wq: then the
// tap reads phase (dr mod sh, dc mod sw) at (m + floor(dr/sh), n + floor(dc/sw)), i.e.
// buf[q + offset] for q = m * wq + n. Every tap becomes one contiguous loop over the whole
// plane, whatever the stride (no short per-row loops, no strided loads). Columns
// n >= out_w of each padded row are scratch: never copied out, and the output gradient is
// zero there, so they add nothing to dots and scatters.

inline int mod_pos(int a, int b) { return a - floor_div(a, b) * b; }

struct PhaseBox {
  int sh, sw, top, left, hq, wq;
  int64_t plane;  // hq * wq, one phase
  int64_t len;    // flat loop length: (out_h - 1) * wq + out_w
};

// Padding that holds every tap of the given synapses (taps that miss are skipped).
template <typename T>
PhaseBox phase_box(const AxisTaps<T>* taps, int64_t synapses, const PlaneShape& s) {
  int rmin = 0, rmax = 0, cmin = 0, cmax = 0;
  for (int64_t k = 0; k < synapses; ++k) {
    const AxisTaps<T>& ta = taps[2 * k];
    const AxisTaps<T>& tb = taps[2 * k + 1];
    for (int i = 0; i < ta.count; ++i) {
      const int d = ta.first + i;
      if (tap_hits(d, s.h)) rmin = std::min(rmin, floor_div(d, s.sh)), rmax = std::max(rmax, floor_div(d, s.sh));
    }
    for (int j = 0; j < tb.count; ++j) {
      const int d = tb.first + j;
      if (tap_hits(d, s.w)) cmin = std::min(cmin, floor_div(d, s.sw)), cmax = std::max(cmax, floor_div(d, s.sw));
    }
  }
  PhaseBox b;
  b.sh = s.sh;
  b.sw = s.sw;
  b.top = -rmin;
  b.left = -cmin;
  b.hq = b.top + s.out_h + rmax;  // out_h = ceil(h / sh): the tallest phase
  b.wq = b.left + s.out_w + cmax;
  b.plane = static_cast<int64_t>(b.hq) * b.wq;
  b.len = static_cast<int64_t>(s.out_h - 1) * b.wq + s.out_w;
  return b;
}

inline int64_t tap_offset(const PhaseBox& b, int dr, int dc) {
  const int phase = mod_pos(dr, b.sh) * b.sw + mod_pos(dc, b.sw);
  return phase * b.plane + static_cast<int64_t>(b.top + floor_div(dr, b.sh)) * b.wq + b.left +
         floor_div(dc, b.sw);
}

// Row copies inline, in fixed-size pieces: on 7- to 28-wide rows a memmove call costs
// more than the copy, and GCC turns a plain copy loop into one.
inline void copy_bytes(const char* __restrict src, int64_t n, char* __restrict dst) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __builtin_memcpy(dst + i, src + i, 64);
    __asm__("" : "+r"(i));  // hides the loop from GCC's memmove idiom
  }
  if (n - i >= 32) __builtin_memcpy(dst + i, src + i, 32), i += 32;
  if (n - i >= 16) __builtin_memcpy(dst + i, src + i, 16), i += 16;
  if (n - i >= 8) __builtin_memcpy(dst + i, src + i, 8), i += 8;
  if (n - i >= 4) __builtin_memcpy(dst + i, src + i, 4);
}

template <typename T>
inline void copy_row(const T* __restrict src, int n, T* __restrict dst) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "rows of float or double");
  copy_bytes(reinterpret_cast<const char*>(src), static_cast<int64_t>(n) * sizeof(T), reinterpret_cast<char*>(dst));
}

// Into dst (zeroed, sh * sw * plane elements): the phases of one plane.
template <typename T>
void phases_into(const T* x, const PlaneShape& s, const PhaseBox& b, T* dst) {
  for (int r = 0; r < s.h; ++r) {
    const T* row = x + static_cast<int64_t>(r) * s.w;
    T* out = dst + (r % s.sh) * s.sw * b.plane + static_cast<int64_t>(b.top + r / s.sh) * b.wq + b.left;
    if (s.sw == 1) {
      copy_row(row, s.w, out);
    } else {
      // Column phase cp takes columns cp, cp + sw, ...: one strided loop each.
      for (int cp = 0; cp < s.sw && cp < s.w; ++cp) {
        T* dst = out + cp * b.plane;
        const int n = (s.w - cp + s.sw - 1) / s.sw;
#pragma omp simd
        for (int i = 0; i < n; ++i) dst[i] = row[cp + i * s.sw];
      }
    }
  }
}

template <typename T>
void phases_of(const T* x, const PlaneShape& s, const PhaseBox& b, std::vector<T>& buf) {
  buf.assign(static_cast<size_t>(b.sh * b.sw) * b.plane, T(0));
  phases_into(x, s, b, buf.data());
}

template <typename T>
void plane_from_phases(const T* buf, const PlaneShape& s, const PhaseBox& b, T* x) {
  for (int r = 0; r < s.h; ++r) {
    T* row = x + static_cast<int64_t>(r) * s.w;
    const T* src = buf + (r % s.sh) * s.sw * b.plane + static_cast<int64_t>(b.top + r / s.sh) * b.wq + b.left;
    if (s.sw == 1) {
      copy_row(src, s.w, row);
    } else {
      for (int cp = 0; cp < s.sw && cp < s.w; ++cp) {
        const T* from = src + cp * b.plane;
        const int n = (s.w - cp + s.sw - 1) / s.sw;
#pragma omp simd
        for (int i = 0; i < n; ++i) row[cp + i * s.sw] = from[i];
      }
    }
  }
}

template <typename T>
void plane_of_phases(const std::vector<T>& buf, const PlaneShape& s, const PhaseBox& b, T* x) {
  plane_from_phases(buf.data(), s, b, x);
}

// (out_h x out_w) <-> (out_h x wq) with zero scratch columns.
template <typename T>
void widen_into(const T* g, const PlaneShape& s, const PhaseBox& b, T* dst) {
  for (int m = 0; m < s.out_h; ++m) {
    copy_row(g + static_cast<int64_t>(m) * s.out_w, s.out_w, dst + static_cast<int64_t>(m) * b.wq);
  }
}

template <typename T>
void widen(const T* g, const PlaneShape& s, const PhaseBox& b, std::vector<T>& buf) {
  buf.assign(static_cast<size_t>(s.out_h) * b.wq, T(0));
  widen_into(g, s, b, buf.data());
}

template <typename T>
void narrow_into(const T* wide, const PlaneShape& s, const PhaseBox& b, T* out) {
  for (int m = 0; m < s.out_h; ++m) {
    copy_row(wide + static_cast<int64_t>(m) * b.wq, s.out_w, out + static_cast<int64_t>(m) * s.out_w);
  }
}

// ---- all taps of a channel at once -------------------------------------------------
// out[q] = init + sum_t coef[t] * src[q + off[t]] for q < len, computed strip by strip, a
// strip being kStripVectors 64-byte vectors held in registers: one store per element whatever the
// number of taps (a depthwise synapse set has up to 36), instead of one read-modify-write
// per tap; eight independent sums keep both FMA pipes busy (four leave half the issue
// slots waiting on the FMA latency). Reads may run up to one strip past len: buffers
// carry kStripSlack zeros at the end.
constexpr int64_t kStripVectors = 8;
static_assert(kStripVectors % 2 == 0, "dots_of_taps sums a strip's vectors in pairs");
constexpr int64_t kStripSlack = 128;  // elements: 8 vectors of float (and more of double)

template <typename T>
void sum_of_taps(const T* src, const int64_t* off, const T* coef, int64_t taps, T init, int64_t len, T* out) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n, B = kStripVectors;
  for (int64_t q0 = 0; q0 < len; q0 += B * L) {
    V a[B];
    for (int64_t i = 0; i < B; ++i) a[i] = V{} + init;
    for (int64_t t = 0; t < taps; ++t) {
      const T* p = src + off[t] + q0;
      const V c = V{} + coef[t];
#pragma GCC unroll 8
      for (int64_t i = 0; i < B; ++i) a[i] += c * load_vec<V>(p + i * L);
    }
#pragma GCC unroll 8
    for (int64_t i = 0; i < B; ++i) store_vec(out + q0 + i * L, a[i]);
  }
}

// The value taps of a channel's synapses on the wide grid: offsets into the phases and
// coefficients weight * bilinear weight (taps that never touch the plane are left out).
template <typename T>
int64_t value_taps(const AxisTaps<T>* t, const T* w, int64_t K, const PhaseBox& b, const PlaneShape& s,
                   std::vector<int64_t>& off, std::vector<T>& coef) {
  off.clear();
  coef.clear();
  for_each_tap(t, K, s.h, s.w, [&](int64_t k, int dr, int dc, T cv, T, T) {
    if (cv == T(0)) return;
    const int64_t o = tap_offset(b, dr, dc);
    // Synapses that share a tap read it once: at +-3 nine synapses' 36 taps cover ~25
    // distinct pixels of the 7x7 box.
    const auto same = std::find(off.begin(), off.end(), o);
    if (same != off.end()) {
      coef[same - off.begin()] += w[k] * cv;
      return;
    }
    off.push_back(o);
    coef.push_back(w[k] * cv);
  });
  return static_cast<int64_t>(off.size());
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// One synapse's backward on the wide grid: with gxb, adds scale * its transposed read of
// g; with want_dots, returns the dots of g with its value and slope reads.
template <typename T>
Read3<T> synapse_backward(const T* g, const T* xb, T* gxb, const PhaseBox& b, const PlaneShape& s,
                          const AxisTaps<T>& ta, const AxisTaps<T>& tb, T scale, bool want_dots) {
  Read3<T> res{T(0), T(0), T(0)};
  const int64_t len = b.len;
  for (int i = 0; i < ta.count; ++i) {
    const int dr = ta.first + i;
    if (!tap_hits(dr, s.h)) continue;
    for (int j = 0; j < tb.count; ++j) {
      const int dc = tb.first + j;
      if (!tap_hits(dc, s.w)) continue;
      const T cv = ta.value[i] * tb.value[j], ca = ta.slope[i] * tb.value[j], cb = ta.value[i] * tb.slope[j];
      // Plain loops here, not for_each_tap's callback: through a lambda's captures GCC
      // does not vectorise the passes below.
      const bool dot = want_dots && (cv != T(0) || ca != T(0) || cb != T(0));
      const bool scatter = gxb != nullptr && cv != T(0);
      const int64_t off = tap_offset(b, dr, dc);
      const T coef = scale * cv;
      T d = T(0);
      if (dot && scatter) {
        const T* xs = xb + off;
        T* gs = gxb + off;
#pragma omp simd reduction(+ : d)
        for (int64_t q = 0; q < len; ++q) {
          d += g[q] * xs[q];
          gs[q] += coef * g[q];
        }
      } else if (dot) {
        const T* xs = xb + off;
#pragma omp simd reduction(+ : d)
        for (int64_t q = 0; q < len; ++q) d += g[q] * xs[q];
      } else if (scatter) {
        T* gs = gxb + off;
#pragma omp simd
        for (int64_t q = 0; q < len; ++q) gs[q] += coef * g[q];
      }
      res.value += cv * d;
      res.d_alpha += ca * d;
      res.d_beta += cb * d;
    }
  }
  return res;
}

}  // namespace acu
