"""Every kernel in ``acuzoo.ops.KERNELS`` computes the reference (eq. 5) in float64.

The matrix is built from the list: a kernel joins it by being listed. Each kernel runs,
forced, on every call it serves (shared, grouped, narrow-grouped and depthwise layers;
strides 1 and 2; odd sizes; batch 1 and 3; NCHW and channels_last; positions on the grid,
on integers off the grid, within +-1.5 and far outside the plane), and its output and all
three gradients equal the reference's; a forward-only kernel runs with the planned
backward. Kernels for a device this machine lacks are listed but not run here (the CUDA
kernels' per-element code is held to the reference on the CPU in test_native_cpu.py).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from acuzoo.ops import KERNELS, active_conv2d, force, reference_active_conv2d
from acuzoo.ops.plan import Spread, describe_call

# (C_in, C_out, groups, P)
LAYOUTS = {
    "shared": (8, 8, 1, 1),
    "grouped": (16, 16, 2, 2),
    "narrow_groups": (8, 8, 4, 4),
    "depthwise": (6, 6, 6, 6),
    "depthwise_shared_sets": (6, 6, 6, 3),
}
SPREADS = ["grid", "integers", "1.5", "far"]
STRIDES = {"s1": (1, 1), "s2": (2, 2), "s2x1": (2, 1)}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
RUNS_HERE = [name for name, k in KERNELS.items() if k.device in ("any", "cpu") and name != "reference"]
TOL = 1e-9


def make_positions(p: int, spread: str, gen: torch.Generator) -> torch.Tensor:
    if spread == "grid":
        grid = torch.tensor([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=torch.float64)
        return grid.expand(p, 9, 2).clone()
    if spread == "integers":
        return torch.randint(-3, 4, (p, 9, 2), generator=gen).double()
    scale = {"1.5": 1.5, "far": 25.0}[spread]
    return (torch.rand(p, 9, 2, generator=gen, dtype=torch.float64) * 2 - 1) * scale


def make_case(layout: str, spread: str, batch: int, memory_format, seed: int = 0):
    c_in, c_out, groups, p = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, 7, 9, generator=gen, dtype=torch.float64).contiguous(memory_format=memory_format)
    weight = torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    return x, weight, make_positions(p, spread, gen), bias, groups


def serves(name: str, layout: str, stride) -> bool:
    """Whether the kernel serves this layout and stride (its own rule, from KERNELS)."""
    x, weight, positions, _, groups = make_case(layout, "grid", 1, torch.contiguous_format)
    call = describe_call(x, weight, positions, stride, groups, native=True, spread=Spread.of(positions))
    return KERNELS[name].refusal(call, "forward") is None


def with_grads(fn, x, weight, positions, bias, stride, groups):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, positions, bias)]
    out = fn(*leaves, stride, groups)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, grad.contiguous(memory_format=torch.contiguous_format))
    return out, grads


def forced(name: str):
    return force(name) if "backward" in KERNELS[name].directions else force(forward=name)


def variants():
    """(stride, spread, format): every stride and format at +-1.5; the other spreads at
    strides 1 and 2 in NCHW (the formats' own code paths do not depend on the spread)."""
    for (sid, stride), (fid, fmt) in itertools.product(STRIDES.items(), FORMATS.items()):
        yield sid, stride, "1.5", fid, fmt
    for spread in ("grid", "integers", "far"):
        for sid in ("s1", "s2"):
            yield sid, STRIDES[sid], spread, "nchw", FORMATS["nchw"]


MATRIX = [
    pytest.param(name, layout, stride, spread, fmt, id=f"{name}-{layout}-{sid}-{spread}-{fid}")
    for name, layout, (sid, stride, spread, fid, fmt) in itertools.product(RUNS_HERE, LAYOUTS, list(variants()))
    if serves(name, layout, stride)
]


@pytest.mark.parametrize("name, layout, stride, spread, memory_format", MATRIX)
def test_every_kernel_equals_the_reference_with_gradients(ext, name, layout, stride, spread, memory_format):
    batch = 1 if spread in ("grid", "far") else 3
    x, weight, positions, bias, groups = make_case(layout, spread, batch, memory_format)
    want, want_grads = with_grads(reference_active_conv2d, x, weight, positions, bias, stride, groups)
    with forced(name):
        got, got_grads = with_grads(active_conv2d, x, weight, positions, bias, stride, groups)
    assert got.shape == want.shape
    assert (got - want).abs().max() < TOL
    for label, g, w in zip(("input", "weight", "positions", "bias"), got_grads, want_grads):
        assert (g - w).abs().max() < TOL * max(1.0, w.abs().max().item()), label
    assert got.is_contiguous(memory_format=memory_format)
    assert got_grads[0].is_contiguous(memory_format=memory_format)


def test_the_matrix_covers_every_cpu_kernel_in_every_direction():
    covered = {param.values[0] for param in MATRIX}
    assert covered == set(RUNS_HERE)
    for name in RUNS_HERE:
        assert any(KERNELS[name].directions), name


@pytest.mark.parametrize("name", RUNS_HERE)
def test_every_kernel_passes_gradcheck_away_from_integers(ext, name):
    layout = "depthwise" if KERNELS[name].depthwise_only else "grouped"
    x, weight, positions, bias, groups = make_case(layout, "1.5", 2, torch.contiguous_format, seed=3)
    positions = positions.round() + 0.25  # off the integers, where the slope is one-sided
    leaves = [t.clone().requires_grad_() for t in (x[:, :, :5, :6], weight, positions, bias)]
    with forced(name):
        assert torch.autograd.gradcheck(lambda *a: active_conv2d(*a, 1, groups), leaves)


@pytest.mark.parametrize("name", RUNS_HERE)
def test_every_kernel_follows_the_central_rule_for_positions_on_integers(ext, name):
    layout = "depthwise" if KERNELS[name].depthwise_only else "shared"
    x, weight, positions, bias, groups = make_case(layout, "integers", 2, torch.contiguous_format, seed=5)
    _, want = with_grads(reference_active_conv2d, x, weight, positions, bias, 1, groups)
    with forced(name):
        _, got = with_grads(active_conv2d, x, weight, positions, bias, 1, groups)
    assert (got[2] - want[2]).abs().max() < TOL * max(1.0, want[2].abs().max().item())


@pytest.mark.parametrize("name", RUNS_HERE)
def test_every_kernel_handles_an_empty_batch(ext, name):
    layout = "depthwise" if KERNELS[name].depthwise_only else "grouped"
    x, weight, positions, bias, groups = make_case(layout, "1.5", 1, torch.contiguous_format)
    empty = x[:0]
    with forced(name):
        out, grads = with_grads(active_conv2d, empty, weight, positions, bias, 1, groups)
    assert out.shape == (0, weight.shape[0], 7, 9)
    assert grads[0].shape == empty.shape
    for g in grads[1:]:
        assert torch.count_nonzero(g) == 0


REFUSALS = [
    ("cpu.depthwise_planes", "shared", (1, 1), "serves depthwise layers only"),
    ("cpu.depthwise_blocks", "grouped", (1, 1), "serves depthwise layers only"),
    ("cpu.depthwise_bands", "depthwise", (2, 2), r"serves stride \(1, 1\) only"),
    ("cpu.grouped_tiles", "depthwise", (1, 1), "does not serve depthwise layers"),
    ("cuda.depthwise", "depthwise", (1, 1), "runs on cuda tensors"),
]


@pytest.mark.parametrize("name, layout, stride, message", REFUSALS)
def test_a_forced_kernel_refuses_a_call_it_cannot_serve_naming_itself(ext, name, layout, stride, message):
    x, weight, positions, bias, groups = make_case(layout, "1.5", 1, torch.contiguous_format)
    with force(name), pytest.raises(ValueError, match=rf"kernel '{name}' {message}"):
        active_conv2d(x, weight, positions, bias, stride, groups)


def test_a_forward_only_kernel_cannot_be_forced_as_a_backward(ext):
    x, weight, positions, bias, groups = make_case("depthwise", "1.5", 1, torch.contiguous_format)
    with force(backward="cpu.merged_conv"), pytest.raises(ValueError, match="'cpu.merged_conv' has no backward"):
        active_conv2d(x, weight, positions, bias, 1, groups)


def test_the_native_library_runs_exactly_the_native_kernels_listed(ext):
    listed = [name for name, k in KERNELS.items() if k.native and k.device == "cpu"]
    assert [n for n in torch.ops.acuzoo.native_kernels() if n.startswith("cpu.")] == listed
