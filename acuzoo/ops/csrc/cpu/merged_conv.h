// The platform's own conv (oneDNN on this CPU) run with an ACU's merged kernel (Theorem 2),
// where its tuned kernels beat the native ones: see platform_conv_wanted's callers.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "../common/driver.h"

namespace acu {

// Whether to hand a merged kernel of this radius (the larger of its two half-widths) to the
// platform's conv: float32 (the platform's float64 convs are generic loops) and radius at
// most max_radius, unless the test hook forces it (then any dtype and radius) or forbids it.
bool platform_conv_wanted(at::ScalarType dtype, int radius, int max_radius);

// The layer's forward with kernel (C_out, C_in / groups, 2a + 1, 2b + 1), its centre the
// origin tap, padding (a, b). It runs outside autocast: the op's own dtype is its contract,
// even when called inside an autocast region.
at::Tensor platform_conv(const at::Tensor& input, const at::Tensor& kernel, const std::optional<at::Tensor>& bias,
                         const Geometry& g);

}  // namespace acu
