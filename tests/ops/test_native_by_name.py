"""The native CPU kernels called by name: ``acuzoo::active_conv2d(..., forward_kernel,
backward_kernel)`` runs exactly the named kernels, each equal in float64 to the reference ACU
(forward) and to autograd through it (gradients) on every geometry it serves; a kernel asked
for a call it cannot serve refuses it, naming itself and why.
"""

from __future__ import annotations

import itertools
import zlib
from functools import cache

import pytest
import torch

from acuzoo.ops.reference import reference_active_conv2d

TOL = 1e-9

# What each CPU kernel serves (the specification this file holds them to).
DEPTHWISE, GROUPED = "depthwise", "grouped"
SERVES = {
    "cpu.depthwise_planes": {"layers": {DEPTHWISE}, "strides": (1, 2), "backward": True},
    "cpu.depthwise_blocks": {"layers": {DEPTHWISE}, "strides": (1, 2), "backward": True},
    "cpu.depthwise_bands": {"layers": {DEPTHWISE}, "strides": (1,), "backward": True},
    "cpu.merged_conv": {"layers": {DEPTHWISE, GROUPED}, "strides": (1, 2), "backward": False},
    "cpu.grouped_tiles": {"layers": {GROUPED}, "strides": (1, 2), "backward": True},
    "cpu.columns": {"layers": {DEPTHWISE, GROUPED}, "strides": (1, 2), "backward": True},
}
# name: (c_in, c_out, groups, sets)
GEOMETRIES = {
    "depthwise_P6": (6, 6, 6, 6),
    "depthwise_P3": (6, 6, 6, 3),
    "grouped_P1": (16, 16, 2, 1),
    "grouped_P2": (16, 16, 2, 2),
    "shared": (16, 8, 1, 1),
}
SPREADS = ("grid", "1.5", "far")
HEIGHT, WIDTH = 7, 9


def layer_kind(geometry: str) -> str:
    c_in, c_out, groups, _ = GEOMETRIES[geometry]
    return DEPTHWISE if groups == c_in == c_out else GROUPED


def serves(kernel: str, geometry: str, stride: int) -> bool:
    spec = SERVES[kernel]
    return layer_kind(geometry) in spec["layers"] and stride in spec["strides"]


def pairs_for(geometry: str, stride: int, every_backward: bool = False) -> list[tuple[str, str]]:
    """(forward, backward) pairs that serve the call: each kernel with its own backward, and each
    forward-only kernel with cpu.columns' backward, or with every backward."""
    backwards = [k for k in SERVES if SERVES[k]["backward"] and serves(k, geometry, stride)]
    out = []
    for kernel in SERVES:
        if not serves(kernel, geometry, stride):
            continue
        if SERVES[kernel]["backward"]:
            out.append((kernel, kernel))
        else:
            out += [(kernel, b) for b in (backwards if every_backward else ["cpu.columns"])]
    return out


def positions_of(sets: int, spread: str, gen: torch.Generator) -> torch.Tensor:
    """(sets, 9, 2): the 3x3 grid, moved by up to 1.5 px ("1.5"), and with two synapses far
    outside the plane ("far")."""
    pos = torch.tensor([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=torch.float64).repeat(sets, 1, 1)
    if spread != "grid":
        pos = pos + torch.rand(pos.shape, generator=gen, dtype=torch.float64) * 3 - 1.5
    if spread == "far":  # one of them on integers
        pos[:, 1] = torch.tensor([40.25, -3.5], dtype=torch.float64)
        pos[:, -1] = torch.tensor([2.0, -41.0], dtype=torch.float64)
    pos[:, 4] = 0  # the origin synapse
    return pos


@cache
def case(geometry: str, spread: str, stride: int, batch: int, channels_last: bool):
    """Input, weight, positions, bias and an output gradient, all float64."""
    c_in, c_out, groups, sets = GEOMETRIES[geometry]
    gen = torch.Generator().manual_seed(zlib.crc32(repr((geometry, spread, stride, batch)).encode()))
    x = torch.randn(batch, c_in, HEIGHT, WIDTH, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    positions = positions_of(sets, spread, gen)
    out_shape = (batch, c_out, (HEIGHT - 1) // stride + 1, (WIDTH - 1) // stride + 1)
    grad_out = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    return x, weight, positions, bias, grad_out, groups


def run(op, x, weight, positions, bias, grad_out, **kwargs):
    """The output and the gradients (input, weight, positions, bias) of op for grad_out."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, positions, bias)]
    y = op(*leaves, **kwargs)
    y.backward(grad_out)
    return y.detach(), [t.grad for t in leaves]


@cache
def reference(key: tuple):
    x, weight, positions, bias, grad_out, groups = case(*key)
    stride = key[2]
    return run(reference_active_conv2d, x, weight, positions, bias, grad_out, stride=stride, groups=groups)


def named(forward: str, backward: str, stride: int, groups: int):
    def op(x, weight, positions, bias):
        return torch.ops.acuzoo.active_conv2d(x, weight, positions, bias, [stride, stride], groups, forward, backward)

    return op


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=TOL, msg=lambda m: f"{what}: {m}")


MATRIX = [
    pytest.param(
        fwd,
        bwd,
        key,
        id=f"{fwd}+{bwd.split('.')[1]}-{key[0]}-{key[1]}-s{key[2]}-n{key[3]}-{'cl' if key[4] else 'nchw'}",
    )
    for key in itertools.product(GEOMETRIES, SPREADS, (1, 2), (1, 3), (False, True))
    for fwd, bwd in pairs_for(key[0], key[2])
]


def test_the_cpu_kernels_are_the_ones_specified_here_in_a_fixed_order(ext):
    names = [n for n in torch.ops.acuzoo.native_kernels() if n.startswith("cpu.")]
    assert names == list(SERVES)


@pytest.mark.parametrize(("forward", "backward", "key"), MATRIX)
def test_named_kernels_equal_the_reference_in_float64(ext, forward, backward, key):
    x, weight, positions, bias, grad_out, groups = case(*key)
    y, grads = run(named(forward, backward, key[2], groups), x, weight, positions, bias, grad_out)
    y_ref, grads_ref = reference(key)
    assert_close(y, y_ref, "output")
    for what, g, g_ref in zip(("input", "weight", "positions", "bias"), grads, grads_ref):
        assert_close(g, g_ref, f"{what} gradient")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize(
    ("forward", "backward", "geometry", "stride"),
    [
        (f, b, g, s)
        for g in GEOMETRIES
        for s in (1, 2)
        for f, b in pairs_for(g, s, every_backward=True)
        if not SERVES[f]["backward"]
    ],
)
def test_a_forward_only_kernel_runs_with_every_backward_that_serves_the_call(
    ext, forward, backward, geometry, stride, channels_last
):
    key = (geometry, "far", stride, 3, channels_last)
    x, weight, positions, bias, grad_out, groups = case(*key)
    y, grads = run(named(forward, backward, stride, groups), x, weight, positions, bias, grad_out)
    y_ref, grads_ref = reference(key)
    assert_close(y, y_ref, "output")
    for what, g, g_ref in zip(("input", "weight", "positions", "bias"), grads, grads_ref):
        assert_close(g, g_ref, f"{what} gradient")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(
    ("forward", "backward", "geometry", "stride"),
    [(f, b, g, s) for g in ("depthwise_P6", "grouped_P2") for s in (1, 2) for f, b in pairs_for(g, s)],
)
def test_output_and_input_gradient_take_the_input_memory_format(
    ext, forward, backward, geometry, stride, channels_last
):
    x, weight, positions, bias, grad_out, groups = case(geometry, "1.5", stride, 3, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y, (gx, *_) = run(named(forward, backward, stride, groups), x, weight, positions, bias, grad_out)
    assert y.is_contiguous(memory_format=fmt)
    assert gx.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize(
    ("kind", "stride", "channels_last"),
    [(DEPTHWISE, 1, True), (DEPTHWISE, 2, False), (GROUPED, 1, True)],
    ids=["depthwise-s1-cl", "depthwise-s2-nchw", "grouped-s1-cl"],
)
def test_several_row_tiles_and_channel_blocks_match_the_reference(ext, kind, stride, channels_last):
    # Depthwise: 37 channels, a group of four vector blocks (float64) and a tail block.
    # Grouped: 64 channels per group, 9 synapses, 40 columns: two tiles of rows per sample.
    c_in, c_out, groups, sets = (37, 37, 37, 37) if kind == DEPTHWISE else (128, 4, 2, 2)
    height, width, batch = 9, 40, 2
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(batch, c_in, height, width, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=torch.float64)
    positions = positions_of(sets, "far", gen)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    out_shape = (batch, c_out, (height - 1) // stride + 1, (width - 1) // stride + 1)
    grad_out = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    y_ref, grads_ref = run(reference_active_conv2d, x, weight, positions, bias, grad_out, stride=stride, groups=groups)
    kernels = [k for k, spec in SERVES.items() if kind in spec["layers"] and stride in spec["strides"]]
    for forward in kernels:
        backward = forward if SERVES[forward]["backward"] else "cpu.columns"
        y, grads = run(named(forward, backward, stride, groups), x, weight, positions, bias, grad_out)
        assert_close(y, y_ref, f"{forward} output")
        for what, g, g_ref in zip(("input", "weight", "positions", "bias"), grads, grads_ref):
            assert_close(g, g_ref, f"{backward} {what} gradient")


@pytest.mark.parametrize(
    ("forward", "backward", "geometry"),
    [(f, b, g) for g in ("depthwise_P3", "shared") for f, b in pairs_for(g, 1)],
)
def test_an_empty_batch_gives_an_empty_output_and_zero_parameter_gradients(ext, forward, backward, geometry):
    x, weight, positions, bias, grad_out, groups = case(geometry, "1.5", 1, 1, True)
    x, grad_out = x[:0], grad_out[:0]
    y, (gx, gw, gp, gb) = run(named(forward, backward, 1, groups), x, weight, positions, bias, grad_out)
    assert y.shape == (0, weight.shape[0], HEIGHT, WIDTH)
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(weight))
    assert torch.equal(gp, torch.zeros_like(positions))
    assert torch.equal(gb, torch.zeros_like(bias))


@pytest.mark.parametrize("kernel", [k for k in SERVES if SERVES[k]["backward"]])
def test_the_backward_op_answers_an_empty_batch_with_zero_gradients(ext, kernel):
    geometry = "depthwise_P6" if DEPTHWISE in SERVES[kernel]["layers"] else "grouped_P1"
    x, weight, positions, _, grad_out, groups = case(geometry, "grid", 1, 1, False)
    gx, gw, gp = torch.ops.acuzoo.active_conv2d_backward(
        grad_out[:0], x[:0], weight, positions, [1, 1], groups, [True, True, True], kernel
    )
    assert gx.shape == x[:0].shape
    assert torch.equal(gw, torch.zeros_like(weight))
    assert torch.equal(gp, torch.zeros_like(positions))


REFUSALS = {
    "depthwise_planes_on_a_grouped_layer": (
        "cpu.depthwise_planes",
        "grouped_P1",
        1,
        r"kernel 'cpu\.depthwise_planes' serves depthwise layers only",
    ),
    "depthwise_blocks_on_a_shared_layer": (
        "cpu.depthwise_blocks",
        "shared",
        1,
        r"kernel 'cpu\.depthwise_blocks' serves depthwise layers only",
    ),
    "bands_on_a_grouped_layer": (
        "cpu.depthwise_bands",
        "grouped_P2",
        1,
        r"kernel 'cpu\.depthwise_bands' serves depthwise layers only",
    ),
    "bands_at_stride_2": (
        "cpu.depthwise_bands",
        "depthwise_P6",
        2,
        r"kernel 'cpu\.depthwise_bands' serves stride \(1, 1\) only, got \(2, 2\)",
    ),
    "tiles_on_a_depthwise_layer": (
        "cpu.grouped_tiles",
        "depthwise_P3",
        1,
        r"kernel 'cpu\.grouped_tiles' does not serve depthwise layers",
    ),
    "an_unknown_name": ("cpu.planes", "depthwise_P6", 1, r"unknown kernel 'cpu\.planes'; this library runs cpu\."),
    "a_cuda_kernel_on_cpu_tensors": (
        "cuda.columns",
        "shared",
        1,
        r"kernel 'cuda\.columns'( runs on CUDA tensors, got CPU|; this library runs)",
    ),
}


@pytest.mark.parametrize(("kernel", "geometry", "stride", "match"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_kernel_refuses_a_forward_it_cannot_serve_naming_itself(ext, kernel, geometry, stride, match):
    x, weight, positions, bias, _, groups = case(geometry, "grid", stride, 1, False)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.acuzoo.active_conv2d(x, weight, positions, bias, [stride, stride], groups, kernel, kernel)


@pytest.mark.parametrize(("kernel", "geometry", "stride", "match"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_kernel_refuses_a_backward_it_cannot_serve_naming_itself(ext, kernel, geometry, stride, match):
    x, weight, positions, _, grad_out, groups = case(geometry, "grid", stride, 1, False)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.acuzoo.active_conv2d_backward(
            grad_out, x, weight, positions, [stride, stride], groups, [True, True, True], kernel
        )


def test_a_forward_only_kernel_named_for_the_backward_is_refused_when_the_backward_runs(ext):
    x, weight, positions, bias, grad_out, groups = case("shared", "grid", 1, 1, False)
    weight = weight.clone().requires_grad_()
    y = torch.ops.acuzoo.active_conv2d(x, weight, positions, bias, [1, 1], groups, "cpu.columns", "cpu.merged_conv")
    with pytest.raises(RuntimeError, match=r"kernel 'cpu\.merged_conv' runs the forward only"):
        y.backward(grad_out)


def test_the_profiler_shows_which_kernels_ran(ext):
    x, weight, positions, bias, grad_out, groups = case("depthwise_P6", "1.5", 1, 1, True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(named("cpu.merged_conv", "cpu.depthwise_blocks", 1, groups), x, weight, positions, bias, grad_out)
    names = {event.name for event in prof.events()}
    assert {"acuzoo:cpu.merged_conv:forward", "acuzoo:cpu.depthwise_blocks:backward"} <= names
    assert not any(n.startswith("acuzoo:cpu.depthwise_planes") for n in names)
