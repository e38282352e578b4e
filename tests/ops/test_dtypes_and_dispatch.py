"""float32, autocast and the kernel plan's choice between the PyTorch and native paths."""

import dataclasses

import pytest
import torch

from acuzoo.ops import KERNELS, active_conv2d, reference_active_conv2d
from acuzoo.ops.plan import describe_call, plan_call


def plan_of(x, w, pos, groups, native, stride=(1, 1), device_type="cpu"):
    call = describe_call(x, w, pos, stride, groups, native)
    return plan_call(dataclasses.replace(call, device_type=device_type), cuda_depthwise_max_synapses=300)


def choice(plan) -> str:
    """ "dense" / "columns" for the PyTorch paths, "native" for any native pair."""
    return "native" if KERNELS[plan.forward].native else plan.forward


def _case(c=8, groups=8, p=8, spread=1.5, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, 10, 10, generator=gen, dtype=dtype)
    w = torch.randn(c, c // groups, 9, generator=gen, dtype=dtype)
    pos = ((torch.rand(p, 9, 2, generator=gen) * 2 - 1) * spread).to(dtype)
    return x, w, pos, groups


@pytest.mark.parametrize("path", ["dense", "columns"])
def test_float32_close_to_float64_reference(path):
    x, w, pos, groups = _case()
    out = active_conv2d(x, w, pos, None, 1, groups, path=path)
    ref = reference_active_conv2d(x.double(), w.double(), pos.double(), None, 1, groups)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() / ref.abs().max() < 1e-5


@pytest.mark.parametrize("path", ["dense", "columns"])
def test_bfloat16_autocast_keeps_positions_in_float32(path):
    x, w, pos, groups = _case(c=8, groups=1, p=1)
    pos.requires_grad_()
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = active_conv2d(x, w, pos, None, 1, groups, path=path)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert pos.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    ref_pos = pos.detach().clone().requires_grad_()
    ref = active_conv2d(x, w.detach(), ref_pos, None, 1, groups, path=path)
    ref.square().sum().backward()
    assert (out.float() - ref).abs().max() / ref.abs().max() < 2e-2
    cos = torch.nn.functional.cosine_similarity(pos.grad.flatten(), ref_pos.grad.flatten(), dim=0)
    assert cos > 0.99


def test_auto_prefers_columns_once_the_dense_box_explodes():
    x = torch.randn(2, 64, 16, 16)
    w = torch.randn(64, 64, 9)
    pos = (torch.rand(1, 9, 2) * 2 - 1) * 12
    pos[0, 0] = torch.tensor([12.0, -12.0])
    assert choice(plan_of(x, w, pos, 1, native=False)) == "columns"


def test_auto_prefers_native_kernels_for_depthwise_layers_on_large_planes_when_built():
    x = torch.randn(2, 64, 14, 14)
    w = torch.randn(64, 1, 9)
    grid = torch.tensor([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=torch.float32)
    assert choice(plan_of(x, w, grid.expand(64, 9, 2), 64, native=True)) == "native"


def test_auto_keeps_dense_for_small_strided_depthwise_planes_until_the_box_outgrows_5x5():
    x = torch.randn(2, 64, 8, 8)
    w = torch.randn(64, 1, 9)
    pos = (torch.rand(64, 9, 2) * 2 - 1) * 1.9
    assert choice(plan_of(x, w, pos, 64, native=True, stride=(2, 2))) == "dense"
    pos[0, 0] = torch.tensor([2.5, -2.5])
    assert choice(plan_of(x, w, pos, 64, native=True, stride=(2, 2))) == "native"


def test_auto_takes_native_channel_blocks_for_small_depthwise_planes_at_stride_1():
    x = torch.randn(2, 64, 4, 4)
    w = torch.randn(64, 1, 9)
    pos = (torch.rand(64, 9, 2) * 2 - 1) * 1.9
    assert choice(plan_of(x, w, pos, 64, native=True)) == "native"


def test_auto_prefers_native_columns_for_a_shared_layer_with_wide_spread_when_built():
    x = torch.randn(2, 64, 16, 16)
    w = torch.randn(64, 64, 9)
    pos = (torch.rand(1, 9, 2) * 2 - 1) * 3
    pos[0, 0] = torch.tensor([3.0, -3.0])
    assert choice(plan_of(x, w, pos, 1, native=True)) == "native"


def test_auto_takes_native_tiles_for_float32_layers_on_the_grid():
    # On the grid the tiles' forward is the platform's 3x3 conv; float64 (no platform conv)
    # and groups too narrow for tiles keep the dense path.
    grid = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=torch.float32)[None]
    x, w = torch.randn(2, 64, 16, 16), torch.randn(64, 64, 9)
    assert choice(plan_of(x, w, grid, 1, native=True)) == "native"
    assert choice(plan_of(x.double(), w.double(), grid.double(), 1, native=True)) == "dense"
    assert choice(plan_of(x, torch.randn(64, 4, 9), grid, 16, native=True)) == "dense"


def test_on_cuda_auto_takes_native_kernels_unless_a_depthwise_table_outgrows_shared_memory():
    # The plan reads only the call's description: no GPU is needed to test it.
    x = torch.randn(2, 8, 32, 32)
    for k, want in ((9, "cuda.depthwise"), (289, "cuda.depthwise"), (324, "dense")):
        w, pos = torch.randn(8, 1, k), torch.zeros(8, k, 2)
        assert plan_of(x, w, pos, 8, native=True, device_type="cuda").forward == want, k
    plan = plan_of(x, torch.randn(8, 8, 324), torch.zeros(1, 324, 2), 1, native=True, device_type="cuda")
    assert plan.forward == plan.backward == "cuda.columns"


def test_auto_prefers_dense_for_depthwise_layers_without_native_kernels():
    x = torch.randn(2, 64, 16, 16)
    w = torch.randn(64, 1, 9)
    pos = (torch.rand(64, 9, 2) * 2 - 1) * 3
    assert choice(plan_of(x, w, pos, 64, native=False)) == "dense"


def test_auto_prefers_dense_for_a_shared_layer_on_its_grid_without_native_kernels():
    x = torch.randn(2, 64, 16, 16)
    w = torch.randn(64, 64, 9)
    grid = torch.tensor([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=torch.float32)
    assert choice(plan_of(x, w, grid[None], 1, native=False)) == "dense"


def test_meta_tensors_propagate_the_output_shape():
    x = torch.empty(2, 8, 9, 7, device="meta")
    w = torch.empty(8, 1, 9, device="meta")
    pos = torch.empty(8, 9, 2, device="meta")
    out = active_conv2d(x, w, pos, None, 2, 8)
    assert out.is_meta and out.shape == (2, 8, 5, 4)


def test_a_layer_cast_to_bfloat16_runs_with_positions_computed_in_float32():
    from acuzoo.nn import ActiveConv2d

    layer = ActiveConv2d(4, 4, 3, groups=4)
    with torch.no_grad():
        layer.positions.uniform_(-1.5, 1.5)
    x = torch.randn(1, 4, 8, 8)
    expected = layer(x)
    low = layer.to(torch.bfloat16)
    out = low(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).abs().max() / expected.abs().max() < 3e-2
    out.float().sum().backward()
    assert low.positions.grad.dtype == torch.bfloat16 and torch.isfinite(low.positions.grad).all()


def test_the_native_self_check_passes_on_kernels_that_agree():
    from acuzoo.ops import dispatch

    assert dispatch._native_self_check(torch.device("cpu"))


def test_the_native_self_check_rejects_kernels_that_disagree(monkeypatch, caplog):
    from acuzoo.ops import dispatch, native

    honest = native.native_active_conv2d
    monkeypatch.setattr(native, "native_active_conv2d", lambda *a: honest(*a) * 1.001)
    assert not dispatch._native_self_check(torch.device("cpu"))
    assert "disagree with the dense path" in caplog.text
