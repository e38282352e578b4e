// The kernel registry and the ops' device-independent part (see driver.h).
#include "driver.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <sstream>

namespace acu {
namespace {

struct Entry {
  const Kernel* kernel;
  c10::DeviceType device;
  std::string forward_label, backward_label;  // what torch.profiler shows for a run
};

// Filled while the library loads (static initialisers of the registration files), read-only
// afterwards.
std::vector<Entry>& registry() {
  static std::vector<Entry> entries;
  return entries;
}

std::string listed(const std::vector<std::string>& names) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << names[i];
  return out.str();
}

const Entry& entry_for(c10::DeviceType device, c10::string_view name) {
  const auto& entries = registry();
  const auto found = std::find_if(entries.begin(), entries.end(), [&](const Entry& e) { return e.kernel->name == name; });
  TORCH_CHECK(found != entries.end(), "acuzoo: unknown kernel '", name, "'; this library runs ", listed(native_kernels()));
  TORCH_CHECK(found->device == device, "acuzoo: kernel '", name, "' runs on ", c10::DeviceTypeName(found->device),
              " tensors, got ", c10::DeviceTypeName(device), " tensors");
  return *found;
}

void check_serves(const Kernel& kernel, const Geometry& g) {
  if (kernel.refuses == nullptr) return;
  const std::string why = kernel.refuses(g);
  TORCH_CHECK(why.empty(), "acuzoo: kernel '", kernel.name, "' ", why);
}

}  // namespace

bool register_kernels(const KernelTable& table) {
  for (const Kernel& k : table.kernels) {
    registry().push_back({&k, table.device, "acuzoo:" + k.name + ":forward", "acuzoo:" + k.name + ":backward"});
  }
  return true;
}

std::vector<std::string> native_kernels() {
  std::vector<Entry> entries = registry();
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.device < b.device; });
  std::vector<std::string> names;
  for (const Entry& e : entries) names.push_back(e.kernel->name);
  return names;
}

std::string unless_depthwise(const Geometry& g) {
  if (is_depthwise(g)) return "";
  std::ostringstream why;
  why << "serves depthwise layers only (groups = C_in = C_out), got C_in " << g.c_in << ", C_out " << g.c_out
      << ", groups " << g.groups;
  return why.str();
}

std::string if_depthwise(const Geometry& g) {
  if (!is_depthwise(g)) return "";
  std::ostringstream why;
  why << "does not serve depthwise layers (groups = C_in = C_out = " << g.c_in << ")";
  return why.str();
}

Operands operands_for(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                      const std::optional<at::Tensor>& bias) {
  const at::ScalarType dtype = input.scalar_type();
  Operands o{weight.to(dtype).contiguous(), positions.to(math_type(dtype)).contiguous(), std::nullopt};
  if (bias.has_value() && bias->defined()) o.bias = bias->to(dtype).contiguous();
  return o;
}

Gradients op_gradients(const Gradients& grads, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& positions) {
  const auto& [gx, gw, gp] = grads;
  return {gx.defined() ? in_format_of(gx, input) : at::empty({0}, input.options()),
          gw.defined() ? in_exact_layout(gw.to(weight.scalar_type()), at::MemoryFormat::Contiguous)
                       : at::empty({0}, weight.options()),
          gp.defined() ? in_exact_layout(gp.to(positions.scalar_type()), at::MemoryFormat::Contiguous)
                       : at::empty({0}, positions.options())};
}

at::Tensor run_forward(c10::DeviceType device, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& positions, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       int64_t groups, c10::string_view kernel) {
  const Geometry g = make_geometry(input, weight, positions, stride, groups);
  const Entry& e = entry_for(device, kernel);
  check_serves(*e.kernel, g);
  RECORD_FUNCTION(e.forward_label, c10::ArrayRef<const c10::IValue>{});
  // An empty batch never reaches the kernels: some divide their work by the batch.
  if (g.batch == 0) return in_format_of(at::empty({0, g.c_out, g.out_h, g.out_w}, input.options()), input);
  const Operands o = operands_for(input, weight, positions, bias);
  return in_format_of(e.kernel->forward(input, o.weight, o.positions, o.bias, g), input);
}

Gradients run_backward(c10::DeviceType device, const at::Tensor& grad_out, const at::Tensor& input,
                       const at::Tensor& weight, const at::Tensor& positions, at::IntArrayRef stride, int64_t groups,
                       std::array<bool, 3> mask, c10::string_view kernel) {
  const Geometry g = make_geometry(input, weight, positions, stride, groups);
  const Entry& e = entry_for(device, kernel);
  TORCH_CHECK(e.kernel->backward != nullptr, "acuzoo: kernel '", kernel,
              "' runs the forward only; name another kernel for the backward");
  check_serves(*e.kernel, g);
  RECORD_FUNCTION(e.backward_label, c10::ArrayRef<const c10::IValue>{});
  Gradients grads;
  if (g.batch == 0) {
    // As nn.Conv2d: an empty input gradient, zero weight and position gradients.
    grads = {mask[0] ? at::empty_like(input) : at::Tensor(), mask[1] ? at::zeros_like(weight) : at::Tensor(),
             mask[2] ? at::zeros_like(positions) : at::Tensor()};
  } else if (mask[0] || mask[1] || mask[2]) {
    const Operands o = operands_for(input, weight, positions, std::nullopt);
    grads = e.kernel->backward(grad_out.to(input.scalar_type()), input, o.weight, o.positions, g, mask);
  }
  return op_gradients(grads, input, weight, positions);
}

}  // namespace acu
