// The ACU's forward as the platform's own conv (oneDNN on x86) with the merged kernel of
// Theorem 2: each synapse's weight splatted onto the integer taps it reads, with its
// bilinear weights. Any geometry and dtype; the conv's tuned kernels are what this kernel
// offers, so it has no backward of its own.
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cstdlib>

#include "kernels.h"
#include "taps.h"

namespace acu {
namespace {

// The merged kernel (C_out, C_in / groups, 2a + 1, 2b + 1), its centre the origin tap: a
// and b are the largest row and column offsets of a tap that reads the plane. One walk over
// each set's synapses, each tap added to the set's output channels: linear in C_out * K.
template <typename T>
at::Tensor merged_kernel(const at::Tensor& weight, const at::Tensor& positions, const Geometry& g) {
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const int64_t K = g.synapses, cpg = g.c_per_group, per_set = g.c_out / g.sets;
  const auto taps = all_taps<T>(positions);
  int a = 0, b = 0;
  for_each_tap(taps.data(), g.sets * K, H, W, [&](int64_t, int dr, int dc, T cv, T, T) {
    if (cv != T(0)) a = std::max(a, std::abs(dr)), b = std::max(b, std::abs(dc));
  });
  const int kh = 2 * a + 1, kw = 2 * b + 1;
  const T* w = weight.const_data_ptr<T>();
  at::Tensor kernel = at::zeros({g.c_out, cpg, kh, kw}, weight.options());
  T* dst = kernel.mutable_data_ptr<T>();
  for (int64_t s = 0; s < g.sets; ++s) {
    for_each_tap(&taps[2 * s * K], K, H, W, [&](int64_t k, int dr, int dc, T cv, T, T) {
      if (cv == T(0)) return;
      const int64_t at_tap = static_cast<int64_t>(dr + a) * kw + (dc + b);
      for (int64_t oi = s * per_set * cpg; oi < (s + 1) * per_set * cpg; ++oi) {
        dst[oi * kh * kw + at_tap] += w[oi * K + k] * cv;
      }
    });
  }
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
