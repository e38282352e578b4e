// Column sums in a fixed order: the CPU kernels' reductions of per-task partial sums.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace acu {

// Column sums of a (R, M) tensor, each summed over rows in order: bitwise reproducible.
inline at::Tensor reduce_rows(const at::Tensor& partial_) {
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

}  // namespace acu
