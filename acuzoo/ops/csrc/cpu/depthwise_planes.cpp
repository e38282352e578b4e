// CPU kernels of the ACU. Work is split by (sample, channel) plane with at::parallel_for;
// within a plane every synapse is a constant sub-pixel shift, so each of its (at most 4)
// integer taps is one axpy or dot over the whole (polyphase, padded) plane, which the
// compiler vectorises.
// Weight/position gradients are written per plane and reduced in a fixed order, so two
// runs give bitwise the same result.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "depthwise_blocks.h"
#include "taps.h"
#include "grouped_tiles.h"
#include "../common/driver.h"
#include "../common/math.h"

namespace acu {
namespace {

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
// more than the copy, and GCC turns a plain copy loop into one (the calls took about a
// tenth of the planes' forward at 192x28: 12.3 -> 11.0 ms on one thread without them).
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

// Depthwise work is split by (channel, stack of samples). At stride 1 the planes of
// several samples of one channel lie side by side in one buffer, sharing their zero
// borders, so that each tap is one loop over the whole row of planes (a 7x7 plane is a
// 49-long loop; 32 of them with shared +-3 borders, ~2.3k). One row rather than a
// square grid of planes: the loop then covers only the planes' rows and the borders
// between them (at 28x28 and +-3, 884 loop elements per plane against 1125), and larger
// stacks pay fewer borders (forward at 192x28, +-3, one thread: 8.3-10 ms with 32 planes
// a stack, 9.1 with 5, 11.7 with 2; single runs). The borders are never copied out.
// Strided planes (phases) go one at a time. Stacks depend only on the batch and plane
// sizes, so sums keep their order.
constexpr int64_t kStackElements = 32768;

inline int64_t stack_size(const Geometry& g, int64_t plane) {
  if (g.stride_h != 1 || g.stride_w != 1) return 1;
  return std::clamp<int64_t>(kStackElements / std::max<int64_t>(plane, 1), 1, g.batch);
}

// Where the planes of a stack lie in one buffer, and the flat loop that covers them: box
// gives the taps' offsets (tap_offset) and the row pitch; output (m, n) of plane j sits
// at slot(j) + m * box.wq + n, and the loop runs over wide indices [start, start + len).
struct Stack {
  PhaseBox box;
  int64_t size, start, len;
  int64_t origin, pitch;  // pitch: from one plane's slot to the next
  int64_t slot(int64_t j) const { return origin + j * pitch; }
};

template <typename T>
Stack stack_of(const AxisTaps<T>* taps, int64_t K, const PlaneShape& s, int64_t count) {
  Stack st;
  st.box = phase_box(taps, K, s);
  PhaseBox& b = st.box;
  if (s.sh != 1 || s.sw != 1) {  // one plane in phases, padded on its own
    st.size = static_cast<int64_t>(s.sh * s.sw) * b.plane;
    st.start = st.origin = 0;
    st.len = b.len;
    st.pitch = st.size;
    return st;
  }
  const int pad_v = std::max(b.top, b.hq - b.top - s.h), pad_h = std::max(b.left, b.wq - b.left - s.w);
  b.top = b.left = 0;  // offsets relative to the reading pixel
  b.wq = static_cast<int>(pad_h + count * (s.w + pad_h));
  b.hq = static_cast<int>(2 * pad_v + s.h);
  b.plane = static_cast<int64_t>(b.hq) * b.wq;
  st.size = b.plane;
  st.origin = static_cast<int64_t>(pad_v) * b.wq + pad_h;
  st.pitch = s.w + pad_h;
  st.start = st.origin;
  st.len = st.slot(count - 1) + static_cast<int64_t>(s.h - 1) * b.wq + s.w - st.start;
  b.len = st.len;
  return st;
}

// ---- all taps of a channel at once -------------------------------------------------
// out[q] = init + sum_t coef[t] * src[q + off[t]] for q < len, computed in blocks of
// kBlockVectors 64-byte vectors held in registers: one store per element whatever the
// number of taps (a depthwise synapse set has up to 36), instead of one read-modify-write
// per tap; eight independent sums keep both FMA pipes busy (four leave half the issue
// slots waiting on the FMA latency). Reads may run up to one block past len: buffers
// carry kBlockSlack zeros at the end.
constexpr int64_t kBlockVectors = 8;
static_assert(kBlockVectors % 2 == 0, "dots_of_taps sums the block's vectors in pairs");
constexpr int64_t kBlockSlack = 128;  // elements: 8 vectors of float (and more of double)

template <typename T>
void sum_of_taps(const T* src, const int64_t* off, const T* coef, int64_t taps, T init, int64_t len, T* out) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n, B = kBlockVectors;
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

// dots[t] = sum over q < len of g[q] * src[q + off[t]], every tap in one pass over g in
// blocks of kBlockVectors vectors (g beyond len must read as zeros; acc: taps * lanes
// scratch).
template <typename T>
void dots_of_taps(const T* g, const T* src, const int64_t* off, int64_t taps, int64_t len, T* acc, T* dots) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n, B = kBlockVectors;
  std::fill(acc, acc + taps * L, T(0));
  for (int64_t q0 = 0; q0 < len; q0 += B * L) {
    V gv[B];
#pragma GCC unroll 8
    for (int64_t i = 0; i < B; ++i) gv[i] = load_vec<V>(g + q0 + i * L);
    for (int64_t t = 0; t < taps; ++t) {
      const T* p = src + off[t] + q0;
      V a0 = gv[0] * load_vec<V>(p), a1 = gv[1] * load_vec<V>(p + L);
#pragma GCC unroll 8
      for (int64_t i = 2; i < B; i += 2) {
        a0 += gv[i] * load_vec<V>(p + i * L);
        a1 += gv[i + 1] * load_vec<V>(p + (i + 1) * L);
      }
      store_vec(acc + t * L, load_vec<V>(acc + t * L) + (a0 + a1));
    }
  }
  for (int64_t t = 0; t < taps; ++t) {
    T d = T(0);
    for (int64_t i = 0; i < L; ++i) d += acc[t * L + i];
    dots[t] = d;
  }
}

// Every tap a channel's synapses read or differentiate (cv, ca or cb non-zero), with its
// synapse: the dots that give the weight and position gradients.
// Each distinct tap's dot is taken once (off); slot[i] says which dot entry i uses.
template <typename T>
struct SlopeTaps {
  std::vector<int64_t> off, slot, synapse;
  std::vector<T> cv, ca, cb;
};

template <typename T>
void slope_taps(const AxisTaps<T>* t, int64_t K, const PhaseBox& b, const PlaneShape& s, SlopeTaps<T>& out) {
  out.off.clear(), out.slot.clear(), out.synapse.clear(), out.cv.clear(), out.ca.clear(), out.cb.clear();
  for_each_tap(t, K, s.h, s.w, [&](int64_t k, int dr, int dc, T cv, T ca, T cb) {
    const int64_t o = tap_offset(b, dr, dc);
    const auto same = std::find(out.off.begin(), out.off.end(), o);
    out.slot.push_back(same - out.off.begin());
    if (same == out.off.end()) out.off.push_back(o);
    out.synapse.push_back(k);
    out.cv.push_back(cv), out.ca.push_back(ca), out.cb.push_back(cb);
  });
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
      // no longer vectorises the passes below (4x slower on strided layers).
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

struct CpuBackend {
  // Grouped/shared layers run by cache-sized tiles where they suit (acu_cpu_tiles.cpp).
  static constexpr bool kTiles = true;
  // Depthwise layers with compact merged kernels run by channel blocks (acu_cpu_blocks.cpp).
  static constexpr bool kBlocks = true;
  static bool blocks_suit(const Geometry& g, const at::Tensor& positions, const at::Tensor& input) {
    return acu::blocks_suit(g, positions, input);
  }
  static at::Tensor blocks_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                   const std::optional<at::Tensor>& bias, const Geometry& g) {
    return acu::blocks_forward(input, weight, positions, bias, g);
  }
  static std::tuple<at::Tensor, at::Tensor> blocks_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                            const at::Tensor& weight, const at::Tensor& positions,
                                                            const Geometry& g, bool need_x, bool need_sums) {
    return acu::blocks_backward(grad_out, input, weight, positions, g, need_x, need_sums);
  }
  static bool tiles_suit(const Geometry& g, bool backward) { return acu::tiles_suit(g, backward); }
  static at::Tensor tiles_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                  const std::optional<at::Tensor>& bias, const Geometry& g) {
    return acu::tiles_forward(input, weight, positions, bias, g);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> tiles_backward(
      const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
      const Geometry& g, std::array<bool, 3> mask) {
    return acu::tiles_backward(grad_out, input, weight, positions, g, mask);
  }

  // Samples per columns chunk: about 32 MiB of columns, so that the GEMMs are large and
  // the parallel regions few, while the buffer stays a fraction of a batch.
  static int64_t columns_chunk(const Geometry& g) {
    const int64_t per_sample = std::max<int64_t>(1, g.units * g.c_per_group * g.synapses * g.out_h * g.out_w * 8);
    return std::max<int64_t>(1, std::min<int64_t>(g.batch, (int64_t(32) << 20) / per_sample));
  }

  static at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& positions,
                                      const std::optional<at::Tensor>& bias, const Geometry& g) {
    at::Tensor out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_depthwise_forward_cpu", [&] {
      using T = scalar_t;
      const auto taps = all_taps<T>(positions);
      const PlaneShape s = plane_shape(g);
      const T* x = input.const_data_ptr<T>();
      const T* w = weight.const_data_ptr<T>();
      const T* b = bias.has_value() ? bias->const_data_ptr<T>() : nullptr;
      T* y = out.mutable_data_ptr<T>();
      const int64_t C = g.c_in, K = g.synapses, per_set = g.c_out / g.sets;
      const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
      const int64_t stack = stack_size(g, in_plane), stacks = (g.batch + stack - 1) / stack;
      at::parallel_for(0, stacks * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> xb, acc, coef;
        std::vector<int64_t> off;
        for (int64_t item = begin; item < end; ++item) {
          const int64_t c = item / stacks, n0 = (item % stacks) * stack;
          const int64_t count = std::min(stack, g.batch - n0);
          const AxisTaps<T>* t = &taps[2 * (c / per_set) * K];
          const Stack st = stack_of(t, K, s, count);
          xb.assign(st.size + kBlockSlack, T(0));
          for (int64_t j = 0; j < count; ++j) {
            phases_into(x + ((n0 + j) * C + c) * in_plane, s, st.box, xb.data() + st.slot(j));
          }
          const int64_t n_taps = value_taps(t, w + c * K, K, st.box, s, off, coef);
          acc.resize(round_up(st.len, kBlockSlack));
          sum_of_taps(xb.data() + st.start, off.data(), coef.data(), n_taps, b ? b[c] : T(0), st.len, acc.data());
          for (int64_t j = 0; j < count; ++j) {
            narrow_into(acc.data() + st.slot(j) - st.start, s, st.box, y + ((n0 + j) * C + c) * out_plane);
          }
        }
      });
    });
    return out;
  }

  static std::tuple<at::Tensor, at::Tensor> depthwise_backward(
      const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
      const at::Tensor& positions, const Geometry& g, bool need_x, bool need_sums) {
    at::Tensor gx = need_x ? at::empty_like(input) : at::Tensor();
    const int64_t C = g.c_in, K = g.synapses;
    const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    const int64_t stack = stack_size(g, in_plane), stacks = (g.batch + stack - 1) / stack;
    // One row of (channel, synapse, 3) sums per stack, reduced over stacks in order.
    at::Tensor partial = at::zeros({stacks, C * K * 3}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_depthwise_backward_cpu", [&] {
      using T = scalar_t;
      const auto taps = all_taps<T>(positions);
      const PlaneShape s = plane_shape(g);
      const T* x = input.const_data_ptr<T>();
      const T* go = grad_out.const_data_ptr<T>();
      const T* w = weight.const_data_ptr<T>();
      T* gxp = need_x ? gx.mutable_data_ptr<T>() : nullptr;
      T* part = partial.mutable_data_ptr<T>();
      const int64_t per_set = g.c_out / g.sets;
      // At stride 1 the input gradient is gathered, gx[j] = sum_t c_t g[j - off_t], with
      // the forward's blocked kernel (one store per element); strided planes scatter.
      const bool gather = s.sh == 1 && s.sw == 1;
      at::parallel_for(0, stacks * C, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> xb, gw, gxb, coef, dot_acc, dots;
        std::vector<int64_t> off;
        SlopeTaps<T> sl;
        for (int64_t item = begin; item < end; ++item) {
          const int64_t c = item / stacks, si = item % stacks, n0 = si * stack;
          const int64_t count = std::min(stack, g.batch - n0);
          const AxisTaps<T>* t = &taps[2 * (c / per_set) * K];
          const Stack st = stack_of(t, K, s, count);
          if (need_sums) {
            xb.assign(st.size + kBlockSlack, T(0));
            for (int64_t j = 0; j < count; ++j) {
              phases_into(x + ((n0 + j) * C + c) * in_plane, s, st.box, xb.data() + st.slot(j));
            }
          }
          gw.assign(st.size + kBlockSlack, T(0));
          for (int64_t j = 0; j < count; ++j) {
            widen_into(go + ((n0 + j) * C + c) * out_plane, s, st.box, gw.data() + st.slot(j));
          }
          // Gathered, every element of the loop's range is written (and only those are
          // copied out); scattered, the taps add into zeros.
          if (gxp && gather) gxb.resize(st.size + kBlockSlack);
          if (gxp && !gather) gxb.assign(st.size + kBlockSlack, T(0));
          if (gxp && gather) {
            // gx[i] = sum_t c_t g[i - off_t]: the borders keep i - off_t inside the buffer.
            const int64_t n_taps = value_taps(t, w + c * K, K, st.box, s, off, coef);
            for (int64_t i = 0; i < n_taps; ++i) off[i] = -off[i];
            sum_of_taps(gw.data() + st.start, off.data(), coef.data(), n_taps, T(0), st.len,
                        gxb.data() + st.start);
          }
          T* sums = part + si * C * K * 3 + c * K * 3;
          if (gather) {
            // All slope dots of the channel in one blocked pass (g is zero past the planes).
            if (need_sums) {
              slope_taps(t, K, st.box, s, sl);
              const int64_t n = static_cast<int64_t>(sl.off.size());
              dot_acc.resize(n * Lanes<T>::n);
              dots.resize(n);
              dots_of_taps(gw.data() + st.start, xb.data() + st.start, sl.off.data(), n, st.len, dot_acc.data(),
                           dots.data());
              for (size_t i = 0; i < sl.slot.size(); ++i) {
                const int64_t k = sl.synapse[i];
                const T d = dots[sl.slot[i]];
                sums[k * 3] += sl.cv[i] * d;
                sums[k * 3 + 1] += w[c * K + k] * sl.ca[i] * d;
                sums[k * 3 + 2] += w[c * K + k] * sl.cb[i] * d;
              }
            }
          } else {
            T* scatter_to = gxp ? gxb.data() + st.start : nullptr;
            for (int64_t k = 0; k < K; ++k) {
              const T wk = w[c * K + k];
              const T* xs = need_sums ? xb.data() + st.start : nullptr;
              const Read3<T> r = synapse_backward(gw.data() + st.start, xs, scatter_to, st.box, s, t[2 * k],
                                                  t[2 * k + 1], wk, need_sums);
              T* dst = sums + k * 3;
              dst[0] = r.value;
              dst[1] = wk * r.d_alpha;
              dst[2] = wk * r.d_beta;
            }
          }
          if (gxp) {
            for (int64_t j = 0; j < count; ++j) {
              plane_from_phases(gxb.data() + st.slot(j), s, st.box, gxp + ((n0 + j) * C + c) * in_plane);
            }
          }
        }
      });
    });
    at::Tensor sums = need_sums ? reduce_rows(partial).view({C, K, 3}) : at::Tensor();
    return {gx, sums};
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
          xb.assign(static_cast<size_t>(s.sh * s.sw) * box.plane + kBlockSlack, T(0));
          phases_into(xp + (n * g.c_in + c) * in_plane, s, box, xb.data());
          acc.resize(round_up(box.len, kBlockSlack));
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
