// The platform's conv for merged kernels (see acu_cpu_platform.h).
#include "acu_cpu_platform.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <atomic>

namespace acu {
namespace {

std::atomic<int64_t> mode_override{0};

void set_platform_mode(int64_t mode) { mode_override.store(mode); }

// (a, b) of a kernel (.., .., 2a + 1, 2b + 1): the padding that keeps the ACU's output size.
std::vector<int64_t> half_widths(const at::Tensor& kernel) { return {kernel.size(2) / 2, kernel.size(3) / 2}; }

}  // namespace

bool platform_conv_wanted(at::ScalarType dtype, int radius, int max_radius) {
  const int64_t mode = mode_override.load();
  if (mode != 0) return mode > 0;
  return dtype == at::kFloat && radius <= max_radius;
}

bool platform_conv_forced() { return mode_override.load() > 0; }

at::Tensor platform_conv(const at::Tensor& input, const at::Tensor& kernel, const std::optional<at::Tensor>& bias,
                         const Geometry& g) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return at::conv2d(input, kernel, bias, {g.stride_h, g.stride_w}, half_widths(kernel), {1, 1}, g.groups);
}

at::Tensor platform_conv_input_grad(const at::Tensor& grad_out, const at::Tensor& input_like,
                                    const at::Tensor& kernel, const Geometry& g) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return std::get<0>(at::convolution_backward(grad_out, input_like, kernel, std::nullopt, {g.stride_h, g.stride_w},
                                              half_widths(kernel), {1, 1}, false, {0, 0}, g.groups,
                                              {true, false, false}));
}

}  // namespace acu

// Test hook: 1 always (any dtype and kernel), -1 never, 0 by each caller's rule.
TORCH_LIBRARY_FRAGMENT(acuzoo, m) { m.def("_set_cpu_platform_conv(int mode) -> ()", &acu::set_platform_mode); }
