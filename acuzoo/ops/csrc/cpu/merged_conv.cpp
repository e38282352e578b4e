// The ACU's forward as the platform's own conv (oneDNN on x86) with the merged kernel of
// Theorem 2: each synapse's weight splatted onto the integer taps it reads, with its
// bilinear weights. Any geometry and dtype; the conv's tuned kernels are what this kernel
// offers, so it has no backward of its own.
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cstdlib>

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

// The merged kernel (C_out, C_in / groups, 2a + 1, 2b + 1), its centre the origin tap: a
// and b are the largest row and column offsets of a tap that reads the plane. Each set's
// synapses add their taps to the set's output channels, synapse by synapse: linear in
// C_out * K, and sets on every thread (each writes its own channels), so that a depthwise
// layer of many channels builds its kernel in a small share of the conv's time.
template <typename T>
at::Tensor merged_kernel(const at::Tensor& weight, const at::Tensor& positions, const Geometry& g) {
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const int64_t K = g.synapses, cpg = g.c_per_group, per_set = g.c_out / g.sets;
  const auto taps = all_taps<T>(positions);
  int a = 0, b = 0;
  for (int64_t i = 0; i < g.sets * K; ++i) {
    for_each_value_tap(taps[2 * i], taps[2 * i + 1], H, W, [&](int dr, int dc, T) {
      a = std::max(a, std::abs(dr)), b = std::max(b, std::abs(dc));
    });
  }
  const int kh = 2 * a + 1, kw = 2 * b + 1;
  const T* w = weight.const_data_ptr<T>();
  at::Tensor kernel = at::zeros({g.c_out, cpg, kh, kw}, weight.options());
  T* dst = kernel.mutable_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * per_set * cpg));
  at::parallel_for(0, g.sets, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = s * K + k;
        for_each_value_tap(taps[2 * i], taps[2 * i + 1], H, W, [&](int dr, int dc, T cv) {
          const int64_t at_tap = static_cast<int64_t>(dr + a) * kw + (dc + b);
          for (int64_t oi = s * per_set * cpg; oi < (s + 1) * per_set * cpg; ++oi) {
            dst[oi * kh * kw + at_tap] += w[oi * K + k] * cv;
          }
        });
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
