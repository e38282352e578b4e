"""The depthwise CPU kernels: channel blocks (merged dense kernel, channels as vector
lanes; read in place or by bands), the plane kernels, and the merged kernel run by the
platform's conv for the forward. ``acuzoo.ops.force`` runs each, so every variant is held
to the reference on every shape here.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from acuzoo.ops import active_conv2d, explain, force, native
from acuzoo.ops.reference import reference_active_conv2d

from .test_native_cpu import (
    TOL,
    assert_native_equals_reference,
    calls_platform_conv,
    grads,
    make_args,
    max_err,
    native_grads_on_threads,
)

# (n, c_in, c_out, h, w, groups, sets, stride), all depthwise. Strided layers have no band
# scheme: the bands serve stride 1 only.
DEPTHWISE = {
    "per_channel": (2, 6, 6, 7, 8, 6, 6, 1),
    "shared_P1": (1, 4, 4, 6, 5, 4, 1, 1),
    "P2": (2, 4, 4, 5, 6, 4, 2, 1),
    "tail_block": (3, 21, 21, 9, 4, 21, 21, 1),  # 21 channels: one full block and a tail
    "one_pixel": (2, 5, 5, 1, 1, 5, 5, 1),
    "single_row": (1, 3, 3, 1, 19, 3, 3, 1),
    "wide_plane": (1, 3, 3, 17, 30, 3, 3, 1),  # several pixel groups per row
    "stride2_odd": (2, 6, 6, 9, 7, 6, 6, 2),
    "stride2_wide_tail": (1, 21, 21, 6, 27, 21, 21, 2),
    "stride3_P1": (2, 4, 4, 10, 11, 4, 1, 3),
    "stride_2x1": (1, 5, 5, 8, 9, 5, 5, (2, 1)),
    # Interior pixels by quads of 4 pixels x 4 blocks (32 channels in float64): two quads
    # of blocks and a partial block; strided, one quad and a whole block.
    "quads": (1, 70, 70, 6, 13, 70, 70, 1),
    "quads_stride2": (1, 40, 40, 7, 14, 40, 40, 2),
}
SPREADS = {"grid": None, "inside": 0.9, "1.5": 1.5, "4": 4.0, "far": 12.0}
# (forward, backward) forced
MODES = {
    "blocks_in_place": ("cpu.depthwise_blocks", "cpu.depthwise_blocks"),
    "blocks_bands": ("cpu.depthwise_bands", "cpu.depthwise_bands"),
    "planes": ("cpu.depthwise_planes", "cpu.depthwise_planes"),
    "merged_conv_forward": ("cpu.merged_conv", "cpu.depthwise_blocks"),
}
BLOCKS = {name: MODES[name] for name in ("blocks_in_place", "blocks_bands", "merged_conv_forward")}


def serves(mode, case) -> bool:
    stride = case[-1]
    return mode[0] != "cpu.depthwise_bands" or stride in (1, (1, 1))


@pytest.fixture(params=BLOCKS.values(), ids=BLOCKS.keys())
def forced_blocks(request, ext):
    forward, backward = request.param
    with force(forward=forward, backward=backward):
        yield


@pytest.mark.parametrize("spread", SPREADS.values(), ids=SPREADS.keys())
@pytest.mark.parametrize(
    "mode, case",
    [
        pytest.param(mode, case, id=f"{mid}-{cid}")
        for mid, mode in MODES.items()
        for cid, case in DEPTHWISE.items()
        if serves(mode, case)
    ],
)
def test_every_depthwise_kernel_equals_reference(ext, mode, case, spread):
    with force(forward=mode[0], backward=mode[1]):
        assert_native_equals_reference(make_args(case, spread))


@pytest.mark.parametrize("spread", [None, 1.5], ids=["grid", "1.5"])
def test_blocks_split_wide_layers_into_bands_of_channels(forced_blocks, spread):
    # 600 channels are wider than one band, and the last band ends in a partial block.
    # Judge: the dense path (Theorem 2), itself held to the reference in
    # test_paths_match_reference.py; the reference is too slow at this width.
    for fmt in (torch.contiguous_format, torch.channels_last):
        x, *rest = make_args((2, 600, 600, 3, 5, 600, 600, 1), spread)
        x = x.contiguous(memory_format=fmt)
        out, got = grads(native.native_active_conv2d, x, *rest)
        ref, want = grads(partial(active_conv2d, path="dense"), x, *rest)
        assert max_err(out, ref) < TOL
        assert all(max_err(a, b) < TOL for a, b in zip(got, want))


@pytest.mark.parametrize("case", [c for c in DEPTHWISE.values() if c[-1] == 1])
def test_blocks_read_and_write_either_memory_format(forced_blocks, case):
    x, *rest = make_args(case, 1.5)
    ref, want = grads(reference_active_conv2d, x, *rest)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        out, got = grads(native.native_active_conv2d, xf, *rest)
        assert out.is_contiguous(memory_format=fmt)
        assert got[0].is_contiguous(memory_format=fmt)
        assert max_err(out, ref) < TOL
        assert all(max_err(a, b) < TOL for a, b in zip(got, want))


def test_blocks_read_non_contiguous_input(forced_blocks):
    x, *rest = make_args((2, 6, 6, 7, 16, 6, 6, 1), 1.5)
    strided = x[..., ::2]
    out = native.native_active_conv2d(strided, *rest)
    assert max_err(out, reference_active_conv2d(strided.contiguous(), *rest)) < TOL


def test_blocks_gradcheck_away_from_integers(forced_blocks):
    x, weight, positions, b, stride, groups = make_args((1, 3, 3, 5, 4, 3, 3, 1), 1.3)
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, positions, b)]
    assert torch.autograd.gradcheck(lambda *a: native.native_active_conv2d(*a, stride, groups), leaves)


def test_blocks_float32_close_to_float64(forced_blocks):
    # 72 channels: in float32 a quad of 4 blocks (64 channels) and a partial block.
    case = (4, 72, 72, 14, 14, 72, 72, 1)
    args = make_args(case, 1.5)
    out64, g64 = grads(native.native_active_conv2d, *args)
    args32 = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
    out32, g32 = grads(native.native_active_conv2d, *args32)
    assert out32.dtype == torch.float32
    assert max_err(out32.double(), out64) < 1e-4
    for a, b in zip(g32, g64):
        assert max_err(a.double(), b) / b.abs().max().item() < 1e-5


def test_blocks_gradients_are_bitwise_the_same_whatever_the_thread_count(forced_blocks):
    # Sums run over fixed sample ranges of each band, not over threads.
    args = make_args((11, 48, 48, 9, 10, 48, 48, 1), 1.5, dtype=torch.float32)
    one, two, again = (native_grads_on_threads(args, n) for n in (1, 2, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.equal(a, b) for a, b in zip(two, again))


CL, NCHW = torch.channels_last, torch.contiguous_format
BLOCK_KERNELS = ("cpu.depthwise_blocks", "cpu.depthwise_bands")


@pytest.mark.parametrize(
    ("fmt", "size", "spread", "stride", "blocks"),
    [
        (CL, 28, None, 1, True),
        (CL, 28, 1.5, 1, True),
        (CL, 28, 3.5, 1, False),
        (NCHW, 7, None, 1, False),
        (NCHW, 14, None, 1, False),
        (CL, 28, None, 2, True),
        (CL, 28, 3.5, 2, False),
    ],
    ids=[
        "cl_grid_blocks",
        "cl_1.5_blocks",
        "cl_3.5_planes",
        "nchw_7x7_planes",
        "nchw_14x14_planes",
        "cl_stride2_grid_blocks",
        "cl_stride2_3.5_planes",
    ],
)
def test_the_plan_takes_blocks_for_compact_kernels_and_planes_for_wide_ones(ext, fmt, size, spread, stride, blocks):
    # Channels-last 28x28 planes (any stride): a 5x5 or 7x7 merged box costs fewer taps per
    # pixel than the synapses' own taps on padded planes; an 11x11 box (+-3.5 around the
    # grid) does not. NCHW input pays two transposes for the blocks, which only the smallest
    # planes earn back.
    x, *rest = make_args((2, 16, 16, size, size, 16, 16, stride), spread, dtype=torch.float32)
    x = x.contiguous(memory_format=fmt)
    if spread is not None:
        rest[1].copy_(rest[1] + torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]))
    weight, positions, b, stride, groups = rest
    plan = explain((weight, positions, b, stride, groups), x)
    assert (plan.backward in BLOCK_KERNELS) == blocks, str(plan)
    assert (plan.backward == "cpu.depthwise_planes") == (not blocks), str(plan)


def test_blocks_reuse_taps_only_for_the_same_position_values_and_plane(forced_blocks):
    # The kernels keep the last positions' taps and boxes (keyed by their values and the
    # plane): an in-place step of the same tensor, or the same values on another plane,
    # must not reuse stale ones. Each call is judged by the reference.
    x, w, pos, b, stride, groups = make_args((2, 6, 6, 7, 8, 6, 6, 1), 4.0)
    for _ in range(3):
        assert_native_equals_reference((x, w, pos, b, stride, groups))
        with torch.no_grad():
            pos.add_(0.37)  # same tensor, same storage, new values
    small = make_args((1, 6, 6, 2, 3, 6, 6, 1), 4.0)[0]
    for plane in (small, x, small):  # same values; the small plane clips the box
        assert_native_equals_reference((plane, w, pos, b, stride, groups))


@pytest.mark.parametrize(
    ("dtype", "size", "spread", "expected"),
    [
        (torch.float32, 28, None, True),
        (torch.float32, 28, 3.0, True),
        (torch.float32, 28, 4.0, False),
        (torch.float32, 7, None, True),
        (torch.float64, 28, None, False),
    ],
    ids=["f32_integers_5x5", "f32_7x7", "f32_9x9_blocks", "f32_7x7_plane", "f64_blocks"],
)
def test_the_platform_conv_runs_float32_depthwise_forwards_up_to_7x7(ext, dtype, size, spread, expected):
    # Float32 merged kernels within 7x7 go to the platform's conv for the forward (on any
    # plane); wider ones and float64 stay with the native kernels.
    x, *rest = make_args((2, 16, 16, size, size, 16, 16, 1), spread, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    plan = explain(tuple(rest), x)
    assert (plan.forward == "cpu.merged_conv") == expected, str(plan)
    assert calls_platform_conv(grads, active_conv2d, x, *rest) == expected


def test_platform_conv_keeps_the_ops_dtype_under_autocast(ext):
    # The op called directly inside a bf16 autocast region: the platform conv it calls must
    # not be autocast (the op's float32 contract), so the results equal those outside it.
    x, w, pos, b, stride, groups = make_args((2, 16, 16, 12, 12, 16, 16, 1), 1.5, dtype=torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, pos, b)]

    def op(*tensors):
        return torch.ops.acuzoo.active_conv2d(*tensors, [1, 1], groups, "cpu.merged_conv", "cpu.depthwise_blocks")

    plain = op(*leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = op(*leaves)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, plain)
    g = torch.randn_like(plain)
    want = torch.autograd.grad(plain, leaves, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = torch.autograd.grad(inside, leaves, g)
    assert all(torch.equal(a, c) for a, c in zip(got, want))


def test_planes_split_large_batches_into_stacks(ext):
    # A stack holds 32768 elements of planes (kStackElements): 64x64 planes go eight samples
    # to a stack, so a batch of 9 runs a full stack and a partial one for every channel.
    with force("cpu.depthwise_planes"):
        assert_native_equals_reference(make_args((9, 2, 2, 64, 64, 2, 2, 1), 1.5))
