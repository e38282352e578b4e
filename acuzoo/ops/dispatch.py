"""``active_conv2d``: the one public entry to the ACU operator. It checks the arguments,
applies autocast, and runs the kernels the plan (``plan.py``) names for the call."""

from __future__ import annotations

import logging

import torch

from . import native
from .columns import columns_active_conv2d
from .dense import dense_active_conv2d
from .geometry import output_size
from .layout import memory_format_of, to_memory_format
from .plan import (
    KERNELS,
    Plan,
    Spread,
    apply_forced,
    describe_call,
    directions_of,
    forced,
    plan_call,
    planning_threads,
    values_readable,
)
from .reference import reference_active_conv2d
from .validation import autocast_enabled, check_active_conv2d_args, pair

PATHS = ("auto", "native", *KERNELS)
log = logging.getLogger(__name__)
# Beyond this displacement no kernel can index a read (and no image is this large).
MAX_DISPLACEMENT = float(2**20)


def plan_for(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    stride: tuple[int, int],
    groups: int,
    path: str = "auto",
) -> Plan:
    """The plan of one call (``path``: "auto", "native" or a kernel name; ``force`` applies
    under "auto"). Reads the positions once: their spread, and whether they are finite."""
    spread = Spread.of(positions)
    if not spread.finite():
        raise ValueError("positions must be finite; got NaN or infinity")
    if max(map(abs, (*spread.low, *spread.high))) > MAX_DISPLACEMENT:
        raise ValueError(
            f"positions must lie within +-{MAX_DISPLACEMENT:.0f} px of their anchor; got {spread.low} .. {spread.high}"
        )
    serves = native_serves(input)
    directions = directions_of(path) if path in KERNELS else forced()
    if not values_readable(input):
        return _plan(input, weight, positions, stride, groups, path, serves, spread, directions)
    # Everything the plan reads, as a key: a layer's calls repeat it step after step, and the
    # plan is a function of it (the spread through its signature only).
    key = (
        input.shape,
        input.stride(),
        weight.shape,
        positions.shape[0],
        stride,
        groups,
        input.dtype,
        input.device.type,
        planning_threads(),
        serves,
        spread.signature(),
        path,
        directions,
    )
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(input, weight, positions, stride, groups, path, serves, spread, directions)
        if len(_plans) >= MAX_REMEMBERED_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan


def _plan(input, weight, positions, stride, groups, path, serves, spread, directions) -> Plan:
    call = describe_call(input, weight, positions, stride, groups, serves, spread)
    max_synapses = native.cuda_depthwise_max_synapses() if call.native and call.device_type == "cuda" else None
    planned = plan_call(call, max_synapses, allow_pytorch=path != "native")
    return apply_forced(call, planned, *directions)


MAX_REMEMBERED_PLANS = 4096
_plans: dict[tuple, Plan] = {}
_checked_devices: dict[str, bool] = {}
_serves: dict[tuple, bool] = {}


def native_serves(x: torch.Tensor) -> bool:
    """Whether the native kernels are built, support ``x``'s dtype, and pass on its device.

    Remembered per (device, dtype, loaded library): the answer is read on every call."""
    key = (x.device, x.dtype, native._loaded)
    if native._loaded is not None and key in _serves:
        return _serves[key]
    answer = _native_serves(x)
    if native._loaded is not None:
        _serves[(x.device, x.dtype, native._loaded)] = answer
    return answer


def _native_serves(x: torch.Tensor) -> bool:
    if not native.supported_dtype(x.device, x.dtype) or not native.native_available(x.device):
        return False
    if x.device.type == "cpu":
        return True  # the CPU kernels are held to the reference by the test suite
    key = str(x.device)
    if key not in _checked_devices:
        _checked_devices[key] = _native_self_check(x.device)
    return _checked_devices[key]


def _native_self_check(device: torch.device) -> bool:
    """First use on a GPU: native against the dense path in float64, forward and gradients.

    A GPU build no test here has run on must not give wrong answers silently; if it
    disagrees, say so once and keep to the PyTorch paths on that device.
    """
    gen = torch.Generator().manual_seed(0)
    for c_in, c_out, groups, sets, stride in ((8, 8, 8, 8, 2), (6, 8, 2, 4, 1)):
        tensors = [
            torch.randn(2, c_in, 9, 7, generator=gen, dtype=torch.float64),
            torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=torch.float64),
            (torch.rand(sets, 9, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 2.5,
            torch.randn(c_out, generator=gen, dtype=torch.float64),
        ]
        results = []
        for run in (native.native_active_conv2d, dense_active_conv2d):
            leaves = [t.to(device).requires_grad_() for t in tensors]
            with torch.enable_grad():
                out = run(*leaves, (stride, stride), groups)  # native: its own plan
                grads = torch.autograd.grad(out.square().sum(), leaves)
            results.append((out, *grads))
        error = max(float((a - b).detach().abs().max()) for a, b in zip(*results))
        if not error < 1e-8:
            log.warning(
                "acuzoo native kernels disagree with the dense path on %s (max error %.3g); "
                "using the PyTorch paths there",
                device,
                error,
            )
            return False
    return True


def _prefers_channels_last(x: torch.Tensor, groups: int) -> bool:
    # Depthwise convs on CPU run 2-3x faster in channels_last, backward included.
    return x.device.type == "cpu" and groups == x.shape[1] and groups > 1


def active_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    path: str = "auto",
) -> torch.Tensor:
    """Active convolution (paper eq. 5; conventions in DESIGN.md).

    Args:
        input: (N, C_in, H, W).
        weight: (C_out, C_in // groups, K).
        positions: (P, K, 2) (row, column) displacements of every synapse from the output's
            anchor pixel, origin included; output channel o uses set o // (C_out // P).
        bias: optional (C_out,).
        stride: int or (row, column) pair; output pixel (m, n) reads (m*s + alpha, n*s + beta).
        groups: conv groups, as in ``nn.Conv2d``.
        path: "auto" (default): the kernel plan chooses (``acuzoo.ops.explain`` says what and
            why; ``acuzoo.ops.force`` overrides it); "native": the plan among the native
            kernels only (builds the extension on first use, raises if it cannot); or a name
            from ``acuzoo.ops.KERNELS`` to run that kernel.

    Returns:
        (N, C_out, (H - 1) // s + 1, (W - 1) // s + 1).
    """
    if path not in PATHS:
        raise ValueError(f"path must be 'auto', 'native' or a name from acuzoo.ops.KERNELS {PATHS[2:]}, got {path!r}")
    check_active_conv2d_args(input, weight, positions, bias, groups)
    stride = pair(stride, "stride")
    if input.is_meta:
        n, hw = input.shape[0], output_size(tuple(input.shape[-2:]), stride)
        return input.new_empty((n, weight.shape[0], *hw))
    device_type = input.device.type
    if autocast_enabled(device_type):
        # Low-precision compute, but the kernel and position slopes are built in fp32 first.
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _run(input.to(dtype), weight, positions, bias, stride, groups, path)
    return _run(input, weight, positions, bias, stride, groups, path)


def _run(input, weight, positions, bias, stride, groups, path) -> torch.Tensor:
    if positions.dtype not in (torch.float32, torch.float64):
        # A model cast to fp16/bf16: sub-pixel positions need fp32 to be worth learning.
        positions = positions.float()
    if not (values_readable(positions) and values_readable(input)):
        # Traced (torch.compile, torch.export): one opaque op that plans at run time.
        return torch.ops.acuzoo.planned_conv2d(input, weight, positions, bias, list(stride), groups, path)
    return run_planned(input, weight, positions, bias, stride, groups, path)


def run_planned(input, weight, positions, bias, stride, groups, path) -> torch.Tensor:
    """Plan the call from its values and run the forward kernel (autograd included)."""
    plan = plan_for(input, weight, positions, stride, groups, path)
    run = _PYTORCH_RUNS.get(plan.forward)
    if run is None:
        return native.native_active_conv2d(input, weight, positions, bias, stride, groups, plan.forward, plan.backward)
    if not torch.autograd.profiler._is_profiler_enabled:
        return run(input, weight, positions, bias, stride, groups)
    # The native kernels label themselves; these are labelled here, in the same form.
    with torch.profiler.record_function(f"acuzoo:{plan.forward}:forward"):
        return run(input, weight, positions, bias, stride, groups)


def run_planned_backward(grad, input, weight, positions, stride, groups, path, output_mask) -> list:
    """Gradients of input, weight and positions (None where not in ``output_mask``) by the
    backward kernel the plan names for these values."""
    plan = plan_for(input, weight, positions, stride, groups, path)
    if plan.backward not in _PYTORCH_RUNS:
        gx, gw, gp = torch.ops.acuzoo.active_conv2d_backward(
            grad, input, weight.to(input.dtype), positions, list(stride), groups, list(output_mask), plan.backward
        )
        return [g if wanted else None for g, wanted in zip((gx, gw, gp), output_mask)]
    # torch.func, not autograd.grad: inside an op's implementation autograd records nothing.
    run = _PYTORCH_RUNS[plan.backward]
    _, vjp = torch.func.vjp(lambda x, w, p: run(x, w, p, None, stride, groups), input, weight, positions)
    return [g if wanted else None for g, wanted in zip(vjp(grad), output_mask)]


def _columns(input, weight, positions, bias, stride, groups) -> torch.Tensor:
    out_hw = output_size(tuple(input.shape[-2:]), stride)
    return columns_active_conv2d(input, weight, positions, bias, stride, groups, out_hw)


def _dense_in_input_format(input, weight, positions, bias, stride, groups) -> torch.Tensor:
    """The dense path, run channels_last where that is faster; the output and the input
    gradient come back in the input's memory format all the same."""
    memory_format = memory_format_of(input)
    if memory_format != torch.channels_last and _prefers_channels_last(input, groups):
        input = to_memory_format(input, torch.channels_last)
    out = dense_active_conv2d(input, weight, positions, bias, stride, groups)
    return out.contiguous(memory_format=memory_format)


_PYTORCH_RUNS = {
    "reference": reference_active_conv2d,
    "dense": _dense_in_input_format,
    "columns": _columns,
}

__all__ = ["active_conv2d", "plan_for", "PATHS"]
