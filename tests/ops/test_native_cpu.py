"""The native extension's CPU kernels (acuzoo/ops/csrc) against the reference ACU (eq. 5).

The extension is built once per session (or loaded from the per-user cache); every check
runs in float64 against ``reference_active_conv2d`` unless it says otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from acuzoo.ops import native
from acuzoo.ops.reference import reference_active_conv2d

TOL = 1e-10


# (n, c_in, c_out, h, w, groups, sets, stride): depthwise, shared, grouped, P != groups.
CASES = {
    "depthwise": (2, 6, 6, 7, 8, 6, 6, 1),
    "depthwise_stride2": (2, 6, 6, 7, 8, 6, 6, 2),
    "depthwise_shared_P1": (1, 4, 4, 6, 5, 4, 1, 1),
    "depthwise_P2": (2, 4, 4, 5, 6, 4, 2, 2),
    "dense_P1": (2, 5, 6, 6, 7, 1, 1, 1),
    "dense_P1_stride2": (1, 5, 6, 7, 6, 1, 1, 2),
    "dense_P_cout": (1, 3, 4, 5, 5, 1, 4, 1),
    "dense_P2": (2, 4, 6, 6, 6, 1, 2, 2),
    "grouped_P_groups": (2, 8, 8, 5, 6, 4, 4, 1),
    "grouped_P2_groups4": (1, 8, 8, 6, 5, 4, 2, 2),
    "grouped_P4_groups2": (1, 4, 8, 5, 7, 2, 4, 1),
}

# Half-width of the uniform draw of positions; "grid" puts them on exact integers.
SPREADS = {"grid": None, "inside": 0.9, "1.5": 1.5, "4": 4.0, "far": 12.0}


def make_args(case, spread, dtype=torch.float64, k=9, bias=True, seed=0):
    n, c_in, c_out, h, w, groups, sets, stride = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(c_out, c_in // groups, k, generator=gen, dtype=dtype)
    if spread is None:
        positions = torch.randint(-2, 3, (sets, k, 2), generator=gen).to(dtype)
    else:
        positions = (torch.rand(sets, k, 2, generator=gen, dtype=dtype) * 2 - 1) * spread
    positions[:, k // 2] = 0  # the origin synapse
    b = torch.randn(c_out, generator=gen, dtype=dtype) if bias else None
    return x, weight, positions, b, stride, groups


def grads(fn, x, weight, positions, b, stride, groups, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, positions, b)]
    out = fn(*leaves, stride, groups)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = g.to(out.dtype)
    return out, torch.autograd.grad(out, leaves, g)


def max_err(a, b):
    return (a - b).abs().max().item()


def native_grads_on_threads(args, threads: int):
    """The native op's four gradients computed with ``threads`` ATen threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return grads(native.native_active_conv2d, *args)[1]
    finally:
        torch.set_num_threads(before)


def calls_platform_conv(fn, *args) -> bool:
    """Whether ``fn(*args)`` runs PyTorch's own conv (the native kernels' platform forward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    return "aten::conv2d" in {e.key for e in prof.key_averages()}


def assert_native_equals_reference(args):
    """The native op's output and its four gradients within TOL of the reference's."""
    out, got = grads(native.native_active_conv2d, *args)
    ref, want = grads(reference_active_conv2d, *args)
    assert max_err(out, ref) < TOL
    for name, a, b in zip(("input", "weight", "positions", "bias"), got, want):
        assert max_err(a, b) < TOL, name


@pytest.mark.parametrize("spread", SPREADS.values(), ids=SPREADS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_equals_reference(ext, case, spread):
    args = make_args(case, spread)
    assert max_err(native.native_active_conv2d(*args), reference_active_conv2d(*args)) < TOL


@pytest.mark.parametrize("spread", [1.5, 4.0], ids=["1.5", "4"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradients_equal_reference(ext, case, spread):
    args = make_args(case, spread)
    _, got = grads(native.native_active_conv2d, *args)
    _, want = grads(reference_active_conv2d, *args)
    for name, a, b in zip(("input", "weight", "positions", "bias"), got, want):
        assert max_err(a, b) < TOL, name


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_position_gradient_on_integers_follows_central_rule(ext, case):
    # Exact integers, the 3x3 grid among them: the slope reads both neighbours, half each.
    args = make_args(case, None)
    _, got = grads(native.native_active_conv2d, *args)
    _, want = grads(reference_active_conv2d, *args)
    assert max_err(got[2], want[2]) < TOL
    assert max_err(got[0], want[0]) < TOL


def test_position_gradient_at_init_grid_is_central_difference(ext):
    # One synapse at (0, 1) on a ramp along columns: d/dbeta = (x[c+2] - x[c]) / 2 = 1 each.
    x = torch.arange(6, dtype=torch.float64).expand(1, 1, 4, 6).clone()
    weight = torch.ones(1, 1, 1, dtype=torch.float64)
    positions = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64, requires_grad=True)
    out = native.native_active_conv2d(x, weight, positions)
    (g,) = torch.autograd.grad(out[..., 1:4].sum(), positions)  # columns whose taps are inside
    assert g[0, 0, 1].item() == pytest.approx(12.0)  # 4 rows x 3 columns x slope 1


@pytest.mark.parametrize(
    "case",
    [CASES["depthwise"], CASES["dense_P2"], CASES["grouped_P4_groups2"]],
    ids=["depthwise", "dense_P2", "grouped_P4_groups2"],
)
def test_gradcheck_away_from_integers(ext, case):
    n, c_in, c_out, _, _, groups, sets, stride = case
    x, weight, positions, b, stride, groups = make_args((1, c_in, c_out, 5, 4, groups, sets, stride), 1.3)
    positions = positions + 0.137  # off the integers, where the ACU is differentiable
    leaves = [t.requires_grad_() for t in (x, weight, positions, b)]
    assert torch.autograd.gradcheck(
        lambda *t: native.native_active_conv2d(*t, stride, groups),
        leaves,
        eps=1e-6,
        atol=1e-6,
        fast_mode=True,
    )


@pytest.mark.parametrize("case", [CASES["depthwise_stride2"], CASES["dense_P1"]], ids=["depthwise", "dense"])
def test_channels_last_input_gives_the_same_result(ext, case):
    x, *rest = make_args(case, 1.5)
    out, got = grads(native.native_active_conv2d, x.contiguous(memory_format=torch.channels_last), *rest)
    ref, want = grads(native.native_active_conv2d, x, *rest)
    # The plan may pick another kernel for each format (planes for NCHW, blocks for
    # channels_last): the same result up to rounding.
    assert max_err(out, ref) < TOL
    assert all(max_err(a, b) < TOL for a, b in zip(got, want))


@pytest.mark.parametrize("case", [CASES["depthwise"], CASES["grouped_P_groups"]], ids=["depthwise", "grouped"])
def test_non_contiguous_input_is_read_correctly(ext, case):
    x, *rest = make_args(case, 1.5)
    wide = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype)
    wide[..., ::2] = x
    view = wide[..., ::2]
    assert not view.is_contiguous()
    assert max_err(native.native_active_conv2d(view, *rest), reference_active_conv2d(x, *rest)) < TOL


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (13, 2), (17, 19)], ids=str)
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_odd_sizes_and_strides(ext, hw, stride):
    for case in ((1, 3, 3, *hw, 3, 3, stride), (1, 3, 4, *hw, 1, 2, stride)):
        args = make_args(case, 2.5)
        _, got = grads(native.native_active_conv2d, *args)
        _, want = grads(reference_active_conv2d, *args)
        assert all(max_err(a, b) < TOL for a, b in zip(got, want))


def test_other_kernel_sizes_are_supported(ext):
    args = make_args(CASES["depthwise"], 2.0, k=25)
    _, got = grads(native.native_active_conv2d, *args)
    _, want = grads(reference_active_conv2d, *args)
    assert all(max_err(a, b) < TOL for a, b in zip(got, want))


@pytest.mark.parametrize("case", [CASES["depthwise"], CASES["dense_P2"]], ids=["depthwise", "columns"])
def test_gradients_are_bitwise_deterministic(ext, case):
    n, c_in, c_out, h, w, groups, sets, stride = case
    args = make_args((8, c_in, c_out, 23, 21, groups, sets, stride), 1.5, dtype=torch.float32)
    first = grads(native.native_active_conv2d, *args)[1]
    second = grads(native.native_active_conv2d, *args)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("case", [CASES["depthwise"], CASES["dense_P1"]], ids=["depthwise", "columns"])
def test_float32_is_close_to_float64(ext, case):
    args64 = make_args(case, 1.5)
    args32 = [t.float() if isinstance(t, torch.Tensor) else t for t in args64]
    out64, g64 = grads(native.native_active_conv2d, *args64)
    out32, g32 = grads(native.native_active_conv2d, *args32)
    assert max_err(out32.double(), out64) < 1e-4
    for a, b in zip(g32, g64):
        assert max_err(a.double(), b) / b.abs().max().item() < 1e-5


def test_float32_positions_with_float64_input(ext):
    x, weight, positions, b, stride, groups = make_args(CASES["depthwise"], 1.5)
    positions = positions.float()
    out, got = grads(native.native_active_conv2d, x, weight, positions, b, stride, groups)
    want = reference_active_conv2d(x, weight, positions.double(), b, stride, groups)
    assert max_err(out, want) < TOL
    assert got[2].dtype == torch.float32


def test_backward_op_skips_gradients_not_asked_for(ext):
    x, weight, positions, b, stride, groups = make_args(CASES["depthwise"], 1.5)
    grad = torch.randn(2, 6, 7, 8, dtype=torch.float64)
    gx, gw, gp = torch.ops.acuzoo.active_conv2d_backward(
        grad, x, weight, positions, [stride, stride], groups, [True, False, False], "cpu.depthwise_planes"
    )
    assert gx.shape == x.shape and gw.numel() == 0 and gp.numel() == 0


def test_input_alone_can_require_grad(ext):
    x, weight, positions, b, stride, groups = make_args(CASES["dense_P2"], 1.5)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(native.native_active_conv2d(x, weight, positions, b, stride, groups).sum(), [x])
    want = reference_active_conv2d(x, weight, positions, b, stride, groups)
    (gx_ref,) = torch.autograd.grad(want.sum(), [x])
    assert max_err(gx, gx_ref) < TOL


def test_fake_tensors_propagate_shapes(ext):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 8, 15, 10)
        out = native.native_active_conv2d(x, torch.empty(8, 2, 9), torch.empty(2, 9, 2), None, (2, 3), 4)
    assert out.shape == (3, 8, 8, 4)


def test_meta_tensors_propagate_shapes(ext):
    x = torch.empty(2, 6, 9, 9, device="meta")
    out = native.native_active_conv2d(
        x, torch.empty(6, 1, 9, device="meta"), torch.empty(6, 9, 2, device="meta"), None, 2, 6
    )
    assert out.shape == (2, 6, 5, 5) and out.device.type == "meta"


@pytest.mark.parametrize(
    "case, kernels",
    [
        (CASES["depthwise"], ("cpu.depthwise_blocks", "cpu.depthwise_planes")),
        (CASES["grouped_P2_groups4"], ("cpu.merged_conv", "cpu.columns")),
    ],
    ids=["depthwise", "grouped"],
)
def test_opcheck_passes(ext, case, kernels):
    x, weight, positions, b, stride, groups = make_args(case, 1.5)
    args = (
        x.requires_grad_(),
        weight.requires_grad_(),
        positions.requires_grad_(),
        b.requires_grad_(),
        [stride, stride],
        groups,
        *kernels,
    )
    torch.library.opcheck(torch.ops.acuzoo.active_conv2d.default, args)


def test_torch_compile_matches_eager(ext):
    args = make_args(CASES["grouped_P_groups"], 1.5)
    compiled = torch.compile(native.native_active_conv2d, backend="aot_eager", fullgraph=True)
    out, got = grads(compiled, *args)
    ref, want = grads(native.native_active_conv2d, *args)
    assert max_err(out, ref) < TOL
    assert all(max_err(a, b) < TOL for a, b in zip(got, want))


def test_availability_check_compiles_without_graph_break(ext):
    def layer(x, weight, positions, b, stride, groups):
        if native.native_available(x.device):
            return native.native_active_conv2d(x, weight, positions, b, stride, groups)
        return reference_active_conv2d(x, weight, positions, b, stride, groups)

    args = make_args(CASES["depthwise"], 1.5)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert max_err(compiled(*args), reference_active_conv2d(*args)) < TOL


def test_cpu_is_available_and_meta_is_not(ext):
    assert native.native_available("cpu")
    assert not native.native_available("meta")


def test_cpu_supports_float32_and_float64_only():
    assert native.supported_dtype("cpu", torch.float32) and native.supported_dtype("cpu", torch.float64)
    assert not native.supported_dtype("cpu", torch.float16)
    assert native.supported_dtype("cuda", torch.bfloat16)


def _run_fresh(env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    code = (
        "import logging, torch; logging.basicConfig(level=logging.WARNING);"
        "from acuzoo.ops import native;"
        "print('available', native.native_available('cpu'), native.native_available('cpu'))"
    )
    env = {**os.environ, "ACUZOO_CACHE_DIR": str(tmp_path), **env_extra}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_disabled_by_environment_with_one_log_line(tmp_path):
    run = _run_fresh({"ACUZOO_NATIVE": "0"}, tmp_path)
    assert "available False False" in run.stdout
    assert run.stderr.count("ACUZOO_NATIVE=0") == 1


def test_missing_compiler_falls_back_with_one_log_line(tmp_path):
    run = _run_fresh({"CXX": "/nonexistent/c++", "ACUZOO_NATIVE_VARIANT": "cpu"}, tmp_path)
    assert "available False False" in run.stdout
    assert run.stderr.count("no C++ compiler found") == 1


def test_build_name_changes_with_the_variant():
    assert native.build_name("cpu") != native.build_name("cuda")
    assert native.build_name("cpu") == native.build_name("cpu")


# The CUDA kernels are launch code around per-element functions (csrc/common/math.h); the
# "twin" ops run those same functions on the CPU, so the GPU's arithmetic and indexing
# are held to the reference here too.
TWIN_SPREADS = {"grid": None, "1.5": 1.5, "far": 12.0}


@pytest.mark.parametrize("spread", TWIN_SPREADS.values(), ids=TWIN_SPREADS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cuda_element_code_equals_reference(ext, case, spread):
    x, weight, positions, b, stride, groups = make_args(case, spread)
    assert_twin_equals_reference(x, weight, positions, b, (stride, stride), groups, seed=3)


def assert_twin_equals_reference(x, weight, positions, b, stride, groups, seed):
    """The twin ops' output and three gradients against the reference's, to TOL."""
    out = torch.ops.acuzoo._twin_active_conv2d(x, weight, positions, b, list(stride), groups)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    got = torch.ops.acuzoo._twin_active_conv2d_backward(
        grad, x, weight, positions, list(stride), groups, [True, True, True]
    )
    leaves = [t.clone().requires_grad_() for t in (x, weight, positions)]
    ref = reference_active_conv2d(*leaves, b, stride, groups)
    want = torch.autograd.grad(ref, leaves, grad)
    assert max_err(out, ref) < TOL
    for name, a, w in zip(("input", "weight", "positions"), got, want):
        assert max_err(a, w) < TOL, name


# The CUDA depthwise kernels read a channel table of up to 9 K offsets, keep 32 cell dots
# in registers per pass and build the input gradient with a compile-time stride of 1 or 2:
# a 5x5 ACU (more than one pass of dots), strides 3 and (2, 1) (the runtime-stride build)
# and offsets beyond the table builder's 16x16 map take the other branches.
@pytest.mark.parametrize(
    "stride, k, spread",
    [
        ((1, 1), 25, 2.5),
        ((2, 2), 25, 2.5),
        ((1, 1), 9, 1.5),
        ((2, 2), 9, 1.5),
        ((3, 3), 9, 2.5),
        ((3, 3), 16, 2.5),
        ((2, 1), 9, 2.5),
        ((1, 1), 9, 30.0),
    ],
    ids=["5x5", "5x5_s2", "3x3", "3x3_s2", "s3", "4x4_s3", "s2x1", "beyond_offset_map"],
)
def test_cuda_element_code_synapse_groups_and_strides(ext, stride, k, spread):
    x, weight, positions, b, _, groups = make_args((2, 5, 5, 23, 22, 5, 5, 1), spread, k=k)
    assert_twin_equals_reference(x, weight, positions, b, stride, groups, seed=4)
