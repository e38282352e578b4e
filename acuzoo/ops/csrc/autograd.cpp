// Autograd for acuzoo::active_conv2d, in C++: torch.library.register_autograd's Python glue
// costs as much per call as a small depthwise layer's whole gap to its conv twin (see
// bench/RESULTS.md). Both directions call the ops through the dispatcher, so that
// torch.compile (AOTAutograd) traces them with their fake kernels
// (acuzoo/ops/native_registration.py). The forward names the backward's kernel, which is
// kept here and handed to the backward op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace acu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                        const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, int64_t groups,
                        c10::string_view forward_kernel, c10::string_view backward_kernel) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("acuzoo::active_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::IntArrayRef, int64_t, c10::string_view, c10::string_view)>();
  return op.call(input, weight, positions, bias, stride, groups, forward_kernel, backward_kernel);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& weight, const at::Tensor& positions,
                                                             c10::IntArrayRef stride, int64_t groups,
                                                             std::array<bool, 3> mask, c10::string_view kernel) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("acuzoo::active_conv2d_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, c10::IntArrayRef, int64_t,
                                                                std::array<bool, 3>, c10::string_view)>();
  return op.call(grad, input, weight, positions, stride, groups, mask, kernel);
}

class ActiveConv2dFunction : public torch::autograd::Function<ActiveConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& positions, const std::optional<at::Tensor>& bias,
                            std::vector<int64_t> stride, int64_t groups, const std::string& forward_kernel,
                            const std::string& backward_kernel) {
    ctx->save_for_backward({input, weight, positions});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["backward_kernel"] = backward_kernel;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_forward(input, weight, positions, bias, stride, groups, forward_kernel, backward_kernel);
  }

  // One gradient per forward argument: input, weight, positions, bias, stride, groups and
  // the two kernel names.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    variable_list out(8);
    if (mask[0] || mask[1] || mask[2]) {
      const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
      const std::string kernel = ctx->saved_data["backward_kernel"].toStringRef();
      auto [gx, gw, gp] =
          call_backward(grad, saved[0], saved[1], saved[2], stride, ctx->saved_data["groups"].toInt(), mask, kernel);
      if (mask[0]) out[0] = gx;
      if (mask[1]) out[1] = gw;
      if (mask[2]) out[2] = gp;
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)) out[3] = grad.sum({0, 2, 3});
    return out;
  }
};

at::Tensor active_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                  const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, int64_t groups,
                                  c10::string_view forward_kernel, c10::string_view backward_kernel) {
  return ActiveConv2dFunction::apply(input, weight, positions, bias, stride.vec(), groups, std::string(forward_kernel),
                                     std::string(backward_kernel));
}

}  // namespace
}  // namespace acu

TORCH_LIBRARY_IMPL(acuzoo, Autograd, m) { m.impl("active_conv2d", &acu::active_conv2d_autograd); }
