// The depthwise ACU on the CPU by planes: work is split by (channel, stack of samples);
// within a plane every synapse is a constant sub-pixel shift, so each of its (at most 4)
// integer taps is one axpy or dot over the whole (polyphase, padded) plane, which the
// compiler vectorises.
// Weight/position gradients are written per stack and reduced in a fixed order, so two
// runs give bitwise the same result.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../common/depthwise.h"
#include "kernels.h"
#include "planes.h"
#include "reduce_rows.h"

namespace acu {
namespace {

// Depthwise work is split by (channel, stack of samples). At stride 1 the planes of
// several samples of one channel lie side by side in one buffer, sharing their zero
// borders, so that each tap is one long loop over the whole row of planes rather than a
// short one per plane. One row rather than a square grid of planes: the loop then covers
// only the planes' rows and the borders between them, and larger stacks pay fewer
// borders (see bench/RESULTS.md). The borders are never copied out.
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

// dots[t] = sum over q < len of g[q] * src[q + off[t]], every tap in one pass over g in
// strips of kStripVectors vectors (g beyond len must read as zeros; acc: taps * lanes
// scratch).
template <typename T>
void dots_of_taps(const T* g, const T* src, const int64_t* off, int64_t taps, int64_t len, T* acc, T* dots) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n, B = kStripVectors;
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

at::Tensor planes_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
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
        xb.assign(st.size + kStripSlack, T(0));
        for (int64_t j = 0; j < count; ++j) {
          phases_into(x + ((n0 + j) * C + c) * in_plane, s, st.box, xb.data() + st.slot(j));
        }
        const int64_t n_taps = value_taps(t, w + c * K, K, st.box, s, off, coef);
        acc.resize(round_up(st.len, kStripSlack));
        sum_of_taps(xb.data() + st.start, off.data(), coef.data(), n_taps, b ? b[c] : T(0), st.len, acc.data());
        for (int64_t j = 0; j < count; ++j) {
          narrow_into(acc.data() + st.slot(j) - st.start, s, st.box, y + ((n0 + j) * C + c) * out_plane);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> planes_backward(
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
    // the forward's sum_of_taps (one store per element); strided planes scatter.
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
          xb.assign(st.size + kStripSlack, T(0));
          for (int64_t j = 0; j < count; ++j) {
            phases_into(x + ((n0 + j) * C + c) * in_plane, s, st.box, xb.data() + st.slot(j));
          }
        }
        gw.assign(st.size + kStripSlack, T(0));
        for (int64_t j = 0; j < count; ++j) {
          widen_into(go + ((n0 + j) * C + c) * out_plane, s, st.box, gw.data() + st.slot(j));
        }
        // Gathered, every element of the loop's range is written (and only those are
        // copied out); scattered, the taps add into zeros.
        if (gxp && gather) gxb.resize(st.size + kStripSlack);
        if (gxp && !gather) gxb.assign(st.size + kStripSlack, T(0));
        if (gxp && gather) {
          // gx[i] = sum_t c_t g[i - off_t]: the borders keep i - off_t inside the buffer.
          const int64_t n_taps = value_taps(t, w + c * K, K, st.box, s, off, coef);
          for (int64_t i = 0; i < n_taps; ++i) off[i] = -off[i];
          sum_of_taps(gw.data() + st.start, off.data(), coef.data(), n_taps, T(0), st.len,
                      gxb.data() + st.start);
        }
        T* sums = part + si * C * K * 3 + c * K * 3;
        if (gather) {
          // All slope dots of the channel in one pass of strips (g is zero past the planes).
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

}  // namespace

namespace cpu {

at::Tensor depthwise_planes_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                    const std::optional<at::Tensor>& bias, const Geometry& g) {
  return planes_forward(input.contiguous(), weight, positions, bias, g);
}

Gradients depthwise_planes_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                    const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  const auto [gx, sums] =
      planes_backward(grad_out.contiguous(), input.contiguous(), weight, positions, g, mask[0], mask[1] || mask[2]);
  return depthwise_gradients(gx, sums, g, mask, reduce_rows);
}

}  // namespace cpu
}  // namespace acu
