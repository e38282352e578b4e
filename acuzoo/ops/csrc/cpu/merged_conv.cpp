// The ACU's forward as the platform's own conv (oneDNN on x86) with the merged kernel of
// Theorem 2: each synapse's weight splatted onto the integer taps it reads, with its
// bilinear weights. Any geometry and dtype; the conv's tuned kernels are what this kernel
// offers, so it has no backward of its own.
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "kernels.h"
#include "taps.h"

namespace acu {
namespace {

// Calls fn(dr, dc, cv) for each tap of one synapse (axis taps ta, tb) that reads an h x w
// plane with a non-zero bilinear weight cv, in for_each_tap's order.
template <typename T, typename Fn>
inline void for_each_value_tap(const AxisTaps<T>& ta, const AxisTaps<T>& tb, int h, int w, Fn&& fn) {
  for (int i = 0; i < ta.count; ++i) {
    const int dr = ta.first + i;
    if (ta.value[i] == T(0) || !tap_hits(dr, h)) continue;
    for (int j = 0; j < tb.count; ++j) {
      const int dc = tb.first + j;
      if (tb.value[j] == T(0) || !tap_hits(dc, w)) continue;
      const T cv = ta.value[i] * tb.value[j];
      if (cv != T(0)) fn(dr, dc, cv);
    }
  }
}

// Every value tap of every synapse that reads an h x w plane, as offsets into the merged
// kernel, with a and b the kernel's half-widths. Depends on the positions' values and the
// plane only, so a thread keeps the last layout it built: a layer run again with the same
// positions (evaluation, or the forward and backward of one step) skips the walk.
template <typename T>
struct TapLayout {
  std::vector<T> key;  // the positions' values
  int h = -1, w = -1;
  int a = 0, b = 0;
  std::vector<int64_t> first;  // per synapse (s * K + k): its entries [first[i], first[i + 1])
  std::vector<int64_t> at_tap;
  std::vector<T> cv;
};

template <typename T>
const TapLayout<T>& tap_layout(const at::Tensor& positions, const Geometry& g) {
  thread_local TapLayout<T> layout;
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const T* pos = positions.const_data_ptr<T>();
  const int64_t n = positions.numel();
  if (layout.h == H && layout.w == W && static_cast<int64_t>(layout.key.size()) == n &&
      std::equal(pos, pos + n, layout.key.begin())) {
    return layout;
  }
  const int64_t synapses = g.sets * g.synapses;
  const auto taps = all_taps<T>(positions);
  int a = 0, b = 0;
  for (int64_t i = 0; i < synapses; ++i) {
    for_each_value_tap(taps[2 * i], taps[2 * i + 1], H, W, [&](int dr, int dc, T) {
      a = std::max(a, std::abs(dr)), b = std::max(b, std::abs(dc));
    });
  }
  const int kw = 2 * b + 1;
  layout.first.assign(1, 0);
  layout.at_tap.clear();
  layout.cv.clear();
  for (int64_t i = 0; i < synapses; ++i) {
    for_each_value_tap(taps[2 * i], taps[2 * i + 1], H, W, [&](int dr, int dc, T cv) {
      layout.at_tap.push_back(static_cast<int64_t>(dr + a) * kw + (dc + b));
      layout.cv.push_back(cv);
    });
    layout.first.push_back(static_cast<int64_t>(layout.at_tap.size()));
  }
  layout.key.assign(pos, pos + n);
  layout.h = H, layout.w = W, layout.a = a, layout.b = b;
  return layout;
}

// The merged kernel (C_out, C_in / groups, 2a + 1, 2b + 1), its centre the origin tap: a
// and b are the largest row and column offsets of a tap that reads the plane. Each set's
// synapses add their taps to the set's output channels, synapse by synapse: linear in
// C_out * K, and sets on every thread (each writes its own channels).
template <typename T>
at::Tensor merged_kernel(const at::Tensor& weight, const at::Tensor& positions, const Geometry& g) {
  const int64_t K = g.synapses, cpg = g.c_per_group, per_set = g.c_out / g.sets;
  const TapLayout<T>& layout = tap_layout<T>(positions, g);
  const int kh = 2 * layout.a + 1, kw = 2 * layout.b + 1;
  const T* w = weight.const_data_ptr<T>();
  at::Tensor kernel = at::zeros({g.c_out, cpg, kh, kw}, weight.options());
  T* dst = kernel.mutable_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * per_set * cpg));
  at::parallel_for(0, g.sets, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = s * K + k;
        for (int64_t e = layout.first[i]; e < layout.first[i + 1]; ++e) {
          const int64_t at_tap = layout.at_tap[e];
          const T cv = layout.cv[e];
          for (int64_t oi = s * per_set * cpg; oi < (s + 1) * per_set * cpg; ++oi) {
            dst[oi * kh * kw + at_tap] += w[oi * K + k] * cv;
          }
        }
      }
    }
  });
  return kernel;
}

}  // namespace

namespace cpu {

at::Tensor merged_conv_forward(const at::Tensor& input_, const at::Tensor& weight, const at::Tensor& positions,
                               const std::optional<at::Tensor>& bias, const Geometry& g) {
  // Depthwise layers run channels-last, as the channel blocks do (a tap is one vector of
  // channels); the others in the input's own format. The output takes the input's format.
  const at::Tensor input =
      input_.contiguous(is_depthwise(g) ? at::MemoryFormat::ChannelsLast : memory_format_of(input_));
  at::Tensor kernel;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_merged_kernel", [&] {
    kernel = merged_kernel<scalar_t>(weight, positions, g);
  });
  // Outside autocast: the op's own dtype is its contract, even inside an autocast region.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return at::conv2d(input, kernel, bias, {g.stride_h, g.stride_w}, {kernel.size(2) / 2, kernel.size(3) / 2}, {1, 1},
                    g.groups);
}

}  // namespace cpu
}  // namespace acu
