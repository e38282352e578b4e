// The platform's conv for merged kernels (see acu_cpu_platform.h).
#include "merged_conv.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <atomic>

namespace acu {
namespace {

std::atomic<int64_t> mode_override{0};

void set_platform_mode(int64_t mode) { mode_override.store(mode); }

}  // namespace

bool platform_conv_wanted(at::ScalarType dtype, int radius, int max_radius) {
  const int64_t mode = mode_override.load();
  if (mode != 0) return mode > 0;
  return dtype == at::kFloat && radius <= max_radius;
}

at::Tensor platform_conv(const at::Tensor& input, const at::Tensor& kernel, const std::optional<at::Tensor>& bias,
                         const Geometry& g) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return at::conv2d(input, kernel, bias, {g.stride_h, g.stride_w}, {kernel.size(2) / 2, kernel.size(3) / 2}, {1, 1},
                    g.groups);
}

}  // namespace acu

// Test hook: 1 always (any dtype and kernel), -1 never, 0 by each caller's rule.
TORCH_LIBRARY_FRAGMENT(acuzoo, m) { m.def("_set_cpu_platform_conv(int mode) -> ()", &acu::set_platform_mode); }
