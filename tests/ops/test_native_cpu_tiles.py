"""The CPU kernels' layouts: channels-last tiles of grouped/shared layers, stacked
depthwise planes, and the rule that outputs take the input's memory format.

``acuzoo.ops.force`` runs the tiles, the whole-batch columns they replace for narrow
groups, and the merged kernel on the platform's conv for the forward.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from acuzoo.ops import active_conv2d, explain, force, native
from acuzoo.ops.reference import reference_active_conv2d

from .test_native_cpu import (
    CASES,
    TOL,
    assert_native_equals_reference,
    calls_platform_conv,
    grads,
    make_args,
    max_err,
    native_grads_on_threads,
)

GROUPED = {name: case for name, case in CASES.items() if not name.startswith("depthwise")}
# (forward, backward) forced
TILINGS = {
    "tiles": ("cpu.grouped_tiles", "cpu.grouped_tiles"),
    "columns": ("cpu.columns", "cpu.columns"),
    "merged_conv_forward": ("cpu.merged_conv", "cpu.grouped_tiles"),
}


@pytest.fixture(params=TILINGS.values(), ids=TILINGS.keys())
def tiling(request, ext):
    forward, backward = request.param
    with force(forward=forward, backward=backward):
        yield request.param


@pytest.fixture
def forced_tiles(ext):
    with force("cpu.grouped_tiles"):
        yield


@pytest.mark.parametrize("spread", [None, 1.5, 12.0], ids=["grid", "1.5", "far"])
@pytest.mark.parametrize("case", GROUPED.values(), ids=GROUPED.keys())
def test_tiles_equal_reference(tiling, case, spread):
    assert_native_equals_reference(make_args(case, spread))


@pytest.mark.parametrize("case", GROUPED.values(), ids=GROUPED.keys())
def test_tiles_read_and_write_channels_last(tiling, case):
    x, *rest = make_args(case, 1.5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out, got = grads(native.native_active_conv2d, x_cl, *rest)
    ref, want = grads(reference_active_conv2d, x, *rest)
    assert max_err(out, ref) < TOL
    assert all(max_err(a, b) < TOL for a, b in zip(got, want))


@pytest.mark.parametrize("stride", [1, 2])
def test_tiles_serve_wide_groups_by_default_and_match_the_reference(ext, stride):
    # 16 channels per group and a batch of 4: the plan takes the tiles.
    args = make_args((4, 32, 24, 11, 13, 2, 3, stride), 2.5)
    assert explain(args[1:], args[0]).backward == "cpu.grouped_tiles"
    _, got = grads(native.native_active_conv2d, *args)
    _, want = grads(reference_active_conv2d, *args)
    assert all(max_err(a, b) < TOL for a, b in zip(got, want))


@pytest.mark.parametrize("stride", [1, 2])
def test_tiles_cover_many_tiles_per_sample(forced_tiles, stride):
    # A tile holds about 128 Ki column elements: 16 channels per group at 64 px wide is
    # about 14 output rows, so a 60-row plane runs several tiles and a partial one.
    assert_native_equals_reference(make_args((2, 32, 32, 60, 64, 2, 2, stride), 1.5))


def test_tiles_gradients_are_bitwise_deterministic(forced_tiles):
    args = make_args((9, 16, 16, 23, 21, 1, 2, 1), 1.5, dtype=torch.float32)
    first = grads(native.native_active_conv2d, *args)[1]
    second = grads(native.native_active_conv2d, *args)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_tiles_give_the_same_gradients_whatever_the_thread_count(forced_tiles):
    # Sums run over fixed sample blocks, not over threads.
    args = make_args((20, 16, 16, 9, 10, 1, 1, 1), 1.5)
    one, two = native_grads_on_threads(args, 1), native_grads_on_threads(args, 2)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("batch", [1, 5, 6])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_stacks_of_samples_equal_reference(ext, batch, stride):
    # 32x32 planes stack four samples per loop: batches of 5 and 6 end in partial stacks.
    assert_native_equals_reference(make_args((batch, 4, 4, 32, 31, 4, 4, stride), 2.5))


@pytest.mark.parametrize(
    "case", [CASES["depthwise"], CASES["dense_P1"], CASES["grouped_P_groups"]], ids=["depthwise", "dense", "grouped"]
)
@pytest.mark.parametrize("kernel", [None, "cpu.grouped_tiles", "cpu.columns"], ids=["auto", "tiles", "columns"])
def test_output_and_input_gradient_take_the_input_memory_format(ext, case, kernel):
    x, weight, positions, b, stride, groups = make_args(case, 1.5)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt).requires_grad_()
        if kernel == "cpu.grouped_tiles" and groups == x.shape[1]:
            continue  # the tiles do not serve depthwise layers
        with force(kernel) if kernel else contextlib.nullcontext():
            out = active_conv2d(xf, weight, positions, b, stride, groups)
        assert out.is_contiguous(memory_format=fmt)
        (gx,) = torch.autograd.grad(out, xf, torch.ones_like(out))
        assert gx.is_contiguous(memory_format=fmt)


def test_fake_kernel_follows_the_same_memory_format_rule(ext):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, weight, positions, b, stride, groups = make_args(CASES["dense_P1"], 1.5)
    x = x.contiguous(memory_format=torch.channels_last)
    names = ("cpu.grouped_tiles", "cpu.grouped_tiles")
    real = torch.ops.acuzoo.active_conv2d(x, weight, positions, b, [stride, stride], groups, *names)
    with FakeTensorMode() as mode:
        xf = mode.from_tensor(x)
        fake = torch.ops.acuzoo.active_conv2d(
            xf,
            mode.from_tensor(weight),
            mode.from_tensor(positions),
            mode.from_tensor(b),
            [stride, stride],
            groups,
            *names,
        )
    assert fake.shape == real.shape and fake.stride() == real.stride()


@pytest.mark.parametrize(
    ("dtype", "grid", "expected"),
    [(torch.float32, True, True), (torch.float32, False, False), (torch.float64, True, False)],
    ids=["f32_grid", "f32_1.5", "f64_grid"],
)
def test_the_grouped_forward_runs_3x3_grid_kernels_on_the_platform_conv(ext, dtype, grid, expected):
    # Float32 layers whose synapses read within the 3x3 grid are the 3x3 conv with the
    # merged kernel; anything wider, and float64, stays with the tiles.
    x, weight, positions, b, stride, groups = make_args((2, 16, 16, 9, 8, 2, 2, 1), 1.5, dtype=dtype)
    if grid:
        positions = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=dtype).expand(2, 9, 2)
    args = (x, weight, positions.contiguous(), b, stride, groups)
    assert (explain(args[1:], x).forward == "cpu.merged_conv") == expected
    assert calls_platform_conv(native.native_active_conv2d, *args) == expected
    out = native.native_active_conv2d(*args)
    ref = reference_active_conv2d(x.double(), weight.double(), positions.double(), b.double(), stride, groups)
    assert max_err(out.double(), ref) < (TOL if dtype == torch.float64 else 1e-4)
