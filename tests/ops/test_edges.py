"""The operator at its edges, on every path: an empty batch, the input's memory format, and
a synapse far beyond the image.

"auto_without_native" is the automatic choice where the native kernels do not serve (as
with ``ACUZOO_NATIVE=0``), simulated by patching the dispatcher's ``native_serves``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from acuzoo.ops import active_conv2d, dispatch, reference_active_conv2d
from acuzoo.ops.dense import DENSE_MAX_KERNEL_ELEMENTS
from acuzoo.ops.plan import describe_call, plan_call

PATHS = ["reference", "dense", "columns", "native", "auto", "auto_without_native"]
# (C_in, C_out, groups, P)
LAYOUTS = {
    "shared": (6, 8, 1, 1),
    "grouped": (8, 8, 4, 4),
    "depthwise": (8, 8, 8, 8),
    "wide_groups": (16, 16, 2, 2),
    # More position sets than the PyTorch columns path takes by default: without the native
    # kernels, auto runs such layers through the dense kernel.
    "depthwise_many_sets": (12, 12, 12, 12),
}
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
FAR = 1e4  # px: the dense kernel of such a synapse would take tens of gigabytes


@pytest.fixture(params=PATHS)
def path(request, monkeypatch) -> str:
    """The path to force ("auto" for both automatic cases), the native kernels ready or off."""
    if request.param == "native":
        request.getfixturevalue("ext")
    if request.param == "auto_without_native":
        monkeypatch.setattr(dispatch, "native_serves", lambda x: False)
        return "auto"
    return request.param


def make_case(layout: str, n: int, spread: float = 1.5, dtype=torch.float64, h: int = 9, w: int = 7, seed: int = 0):
    c_in, c_out, groups, p = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=dtype)
    positions = ((torch.rand(p, 9, 2, generator=gen, dtype=torch.float64) * 2 - 1) * spread).to(dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype)
    return x, weight, positions, bias, groups


def output_and_grads(path, x, weight, positions, bias, stride, groups):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, positions, bias)]
    out = active_conv2d(*leaves, stride, groups, path=path)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return out, torch.autograd.grad(out, leaves, grad_out)


# An empty batch -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(path, layout, dtype, stride):
    x, weight, positions, bias, groups = make_case(layout, 0, dtype=dtype)
    out, (grad_x, grad_w, grad_p, grad_b) = output_and_grads(path, x, weight, positions, bias, stride, groups)
    assert out.shape == (0, weight.shape[0], (9 - 1) // stride + 1, (7 - 1) // stride + 1)
    assert out.dtype == dtype
    assert grad_x.shape == x.shape
    for grad, leaf in ((grad_w, weight), (grad_p, positions), (grad_b, bias)):
        assert grad.shape == leaf.shape and grad.dtype == leaf.dtype
        assert torch.equal(grad, torch.zeros_like(leaf))


@pytest.mark.parametrize("layout", ["shared", "depthwise"])
def test_an_empty_channels_last_batch_runs_on_every_path(path, layout):
    x, weight, positions, bias, groups = make_case(layout, 0)
    x = x.contiguous(memory_format=torch.channels_last)
    out, (grad_x, grad_w, _, _) = output_and_grads(path, x, weight, positions, bias, 1, groups)
    assert out.shape == (0, weight.shape[0], 9, 7) and grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros_like(weight))


def test_an_empty_batch_matches_nn_conv2d_at_the_grid():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, dtype=torch.float64)
    grid = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=torch.float64)
    x = torch.randn(0, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    expected = conv(x)
    got = active_conv2d(x, conv.weight.reshape(4, 1, 9), grid.expand(4, 9, 2), conv.bias, 1, 4)
    assert got.shape == expected.shape
    want = torch.autograd.grad(expected.sum(), [x, conv.weight])
    have = torch.autograd.grad(got.sum(), [x, conv.weight])
    for a, b in zip(have, want):
        assert a.shape == b.shape and torch.equal(a, b)


def test_an_empty_image_is_still_refused_naming_h_and_w():
    x, weight, positions, bias, groups = make_case("shared", 1, h=9, w=7)
    with pytest.raises(ValueError, match=r"input must have H, W >= 1, got shape \(1, 6, 0, 7\)"):
        active_conv2d(x[:, :, :0], weight, positions, bias, 1, groups)


# The input's memory format -----------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_output_and_input_gradient_take_the_input_memory_format(path, layout, dtype, memory_format):
    x, weight, positions, bias, groups = make_case(layout, 2, dtype=dtype)
    x = x.contiguous(memory_format=memory_format)
    out, (grad_x, *_) = output_and_grads(path, x, weight, positions, bias, 1, groups)
    # C > 1 and H * W > 1 here: no tensor is contiguous in both formats.
    assert out.is_contiguous(memory_format=memory_format)
    assert grad_x.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", FORMATS.values(), ids=FORMATS.keys())
def test_keeping_the_memory_format_keeps_the_values(path, memory_format):
    x, weight, positions, bias, groups = make_case("depthwise", 2, seed=3)
    expected, expected_grads = output_and_grads("reference", x, weight, positions, bias, 2, groups)
    x = x.contiguous(memory_format=memory_format)
    out, grads = output_and_grads(path, x, weight, positions, bias, 2, groups)
    assert (out - expected).abs().max() < 1e-10
    for got, want in zip(grads, expected_grads):
        assert (got - want).abs().max() < 1e-10


# A synapse far beyond the image ------------------------------------------------------------


def far_positions(p: int) -> torch.Tensor:
    positions = torch.zeros(p, 9, 2, dtype=torch.float64)
    positions[:, 0, 0] = FAR  # on an integer: its slope reads one tap further still
    positions[:, 1, 1] = -FAR + 0.25
    positions[:, 2] = torch.tensor([0.5, -1.25], dtype=torch.float64)
    return positions


def largest_allocation(fn) -> int:
    """Bytes of the largest single CPU allocation while ``fn()`` runs (forward and backward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events()), default=0)


@pytest.mark.parametrize("layout", ["shared", "wide_groups", "depthwise_many_sets"])
def test_without_native_kernels_auto_never_picks_the_dense_path_for_a_far_synapse(layout):
    c_in, c_out, groups, p = LAYOUTS[layout]
    x, weight = torch.randn(2, c_in, 8, 8), torch.randn(c_out, c_in // groups, 9)
    plan = plan_call(describe_call(x, weight, far_positions(p).float(), (1, 1), groups, native=False))
    assert plan.forward == plan.backward == "columns"


def test_on_cuda_a_large_depthwise_kernel_with_a_far_synapse_does_not_take_the_dense_path():
    # Beyond the CUDA kernels' shared-memory table the dense path serves, unless it is huge.
    x = torch.randn(2, 8, 32, 32)
    weight, positions = torch.randn(8, 1, 324), torch.zeros(8, 324, 2)

    def plan():
        call = dataclasses.replace(describe_call(x, weight, positions, (1, 1), 8, native=True), device_type="cuda")
        return plan_call(call, cuda_depthwise_max_synapses=300).forward

    assert plan() == "dense"
    positions[:, 0, 0] = FAR
    assert plan() == "cuda.columns"


def test_a_forced_dense_path_refuses_a_huge_kernel_naming_its_size_and_the_limit():
    x, weight, _, bias, groups = make_case("depthwise", 1, h=8, w=8)
    message = r"20003 x 20001 kernel.*GiB.*beyond its limit of DENSE_MAX_KERNEL_ELEMENTS = 134,217,728"
    with pytest.raises(ValueError, match=message):
        active_conv2d(x, weight.requires_grad_(), far_positions(8), bias, 1, groups, path="dense")


def test_the_dense_path_still_serves_kernels_within_the_limit():
    # 8 channels x 9 synapses x a 99 x 99 box: well within the limit.
    assert DENSE_MAX_KERNEL_ELEMENTS > 8 * 9 * 99 * 99
    x, weight, _, bias, groups = make_case("depthwise", 1, h=8, w=8)
    positions = far_positions(8) / FAR * 48.5
    out = active_conv2d(x, weight, positions, bias, 1, groups, path="dense")
    expected = reference_active_conv2d(x, weight, positions, bias, 1, groups)
    assert (out - expected).abs().max() < 1e-10


# The dense path refuses it (above); the reference, eq. 5 read pixel by pixel, is the expected value.
@pytest.mark.parametrize("path", [p for p in PATHS if p not in ("dense", "reference")], indirect=True)
@pytest.mark.parametrize("layout", ["shared", "wide_groups", "depthwise_many_sets"])
def test_a_far_synapse_runs_in_little_memory_and_reads_zeros(path, layout):
    x, weight, _, bias, groups = make_case(layout, 2, h=8, w=8)
    positions = far_positions(LAYOUTS[layout][3])
    result = {}
    peak = largest_allocation(lambda: result.update(run=output_and_grads(path, x, weight, positions, bias, 1, groups)))
    assert peak < 2**24  # 16 MiB; the dense kernel would need gigabytes
    out, grads = result["run"]
    expected, expected_grads = output_and_grads("reference", x, weight, positions, bias, 1, groups)
    assert (out - expected).abs().max() < 1e-10
    for got, want in zip(grads, expected_grads):
        assert (got - want).abs().max() < 1e-9
