// Helpers shared by the CPU kernels: the axis taps of every synapse, the walk over a
// channel's taps,
// 64-byte vectors that GCC lowers to AVX-512 (or to pairs/quads of narrower registers
// elsewhere), and a sample's strides.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "../common/math.h"

namespace acu {

template <typename T>
struct Lanes {
  typedef T vec __attribute__((vector_size(64)));
  static constexpr int64_t n = 64 / sizeof(T);
};

template <typename V, typename T>
inline V load_vec(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void store_vec(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// Where (one sample of) a 4-D tensor keeps channel ch of pixel (r, c): strides in elements.
struct Strides {
  int64_t c, h, w;
};

inline Strides sample_strides(const at::Tensor& t) { return {t.stride(1), t.stride(2), t.stride(3)}; }

// Integer division rounding down (up) for any sign of a, b > 0.
inline int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int ceil_div(int a, int b) { return -floor_div(-a, b); }

// A tap at displacement d touches the plane for some output (stride 1) only if |d| < size.
inline bool tap_hits(int d, int size) { return d > -size && d < size; }

// (alpha, beta) axis taps of every synapse of every set, in positions' order.
template <typename T>
std::vector<AxisTaps<T>> all_taps(const at::Tensor& positions) {
  const int64_t n = positions.numel() / 2;
  const T* pos = positions.const_data_ptr<T>();
  std::vector<AxisTaps<T>> taps(2 * n);
  for (int64_t i = 0; i < n; ++i) {
    taps[2 * i] = axis_taps<T>(pos[2 * i]);
    taps[2 * i + 1] = axis_taps<T>(pos[2 * i + 1]);
  }
  return taps;
}

// Calls fn(k, dr, dc, cv, ca, cb) for every tap of synapses [0, K) that touches an
// h x w plane and has a non-zero value (cv) or slope (ca, cb) weight.
template <typename T, typename Fn>
void for_each_tap(const AxisTaps<T>* t, int64_t K, int h, int w, Fn&& fn) {
  for (int64_t k = 0; k < K; ++k) {
    const AxisTaps<T>& ta = t[2 * k];
    const AxisTaps<T>& tb = t[2 * k + 1];
    for (int i = 0; i < ta.count; ++i) {
      const int dr = ta.first + i;
      if (!tap_hits(dr, h)) continue;
      for (int j = 0; j < tb.count; ++j) {
        const int dc = tb.first + j;
        if (!tap_hits(dc, w)) continue;
        const T cv = ta.value[i] * tb.value[j], ca = ta.slope[i] * tb.value[j], cb = ta.value[i] * tb.slope[j];
        if (cv != T(0) || ca != T(0) || cb != T(0)) fn(k, dr, dc, cv, ca, cb);
      }
    }
  }
}

}  // namespace acu
