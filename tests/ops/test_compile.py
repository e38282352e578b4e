"""torch.compile with the default backend (inductor) and torch.export of the ACU.

Traced calls go to ``acuzoo::planned_conv2d`` (acuzoo/ops/traced.py), which plans with the
values at run time; the compiler relies on the fake kernels for sizes, strides and dtypes, so
those are compared with the real kernels' outputs directly, on every kernel and format.
"""

from __future__ import annotations

import io

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.nn import ActiveConv2d
from acuzoo.ops import KERNELS, force

CPU_NATIVE = [name for name, k in KERNELS.items() if k.native and k.device == "cpu"]
CPU_ALL = [name for name, k in KERNELS.items() if k.device in ("any", "cpu")]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Every test compiles ActiveConv2d.forward anew: no recompile limit carried between tests.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.dtype


def call_for(name: str, hw: tuple[int, int], stride: int, dtype=torch.float32):
    """Arguments of a call ``name`` serves: depthwise for the depthwise kernels, else grouped."""
    kernel = KERNELS[name]
    c, groups, sets = (6, 6, 6) if kernel.depthwise_only else (8, 2, 2)
    if kernel.stride_one_only:
        stride = 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, *hw, generator=gen, dtype=dtype)
    weight = torch.randn(c, c // groups, 9, generator=gen, dtype=dtype)
    positions = (torch.rand(sets, 9, 2, generator=gen, dtype=dtype) * 2 - 1) * 1.5
    bias = torch.randn(c, generator=gen, dtype=dtype)
    return x, weight, positions, bias, [stride, stride], groups


def real_and_fake(op, *args):
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    return _as_tuple(real), _as_tuple(fake)


def _as_tuple(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


MASKS = [[True, True, True], [False, True, True], [True, False, False]]


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("name", CPU_NATIVE)
@pytest.mark.parametrize(("hw", "stride"), [((7, 9), 1), ((9, 8), 2), ((1, 1), 1)], ids=["7x9", "9x8_s2", "1x1"])
def test_the_native_ops_fakes_give_the_real_layouts(ext, name, fmt, hw, stride):
    x, weight, positions, bias, stride, groups = call_for(name, hw, stride)
    x = x.contiguous(memory_format=FORMATS[fmt])
    backward = name if "backward" in KERNELS[name].directions else "cpu.columns"
    real, fake = real_and_fake(
        torch.ops.acuzoo.active_conv2d, x, weight, positions, bias, stride, groups, name, backward
    )
    assert layout(real[0]) == layout(fake[0])
    grad = torch.randn_like(real[0])
    for mask in MASKS:
        real, fake = real_and_fake(
            torch.ops.acuzoo.active_conv2d_backward, grad, x, weight, positions, stride, groups, mask, backward
        )
        assert [layout(t) for t in real] == [layout(t) for t in fake], mask


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("name", CPU_ALL)
def test_the_planned_ops_fakes_give_the_real_layouts_on_every_kernel(ext, name, fmt):
    x, weight, positions, bias, stride, groups = call_for(name, (7, 9), 2)
    x = x.contiguous(memory_format=FORMATS[fmt])
    context = force(name) if "backward" in KERNELS[name].directions else force(forward=name)
    with context:
        real, fake = real_and_fake(torch.ops.acuzoo.planned_conv2d, x, weight, positions, bias, stride, groups, "auto")
        assert layout(real[0]) == layout(fake[0])
        grad = torch.randn_like(real[0])
        for mask in MASKS:
            real, fake = real_and_fake(
                torch.ops.acuzoo.planned_conv2d_backward, grad, x, weight, positions, stride, groups, "auto", mask
            )
            assert [layout(t) for t in real] == [layout(t) for t in fake], mask


LAYERS = {
    "depthwise": lambda: ActiveConv2d(12, 12, 3, groups=12, position_groups=12),
    "grouped": lambda: ActiveConv2d(12, 12, 3, groups=4, position_groups=4),
    "shared": lambda: ActiveConv2d(6, 12, 3, stride=2),
}


def moved(layer: ActiveConv2d, spread: float = 1.5) -> ActiveConv2d:
    with torch.no_grad():
        layer.positions.uniform_(-spread, spread)
    return layer


def outputs_and_grads(fn, layer, x):
    x = x.detach().requires_grad_()
    out = fn(x)
    out.square().sum().backward()
    grads = [x.grad, *(p.grad for p in layer.parameters())]
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("fmt", FORMATS, ids=list(FORMATS))
@pytest.mark.parametrize("kind", LAYERS)
def test_a_layer_compiles_full_graph_with_inductor_and_matches_eager(ext, kind, fmt):
    torch.manual_seed(0)
    layer = moved(LAYERS[kind]())
    x = torch.randn(2, layer.in_channels, 11, 9).contiguous(memory_format=FORMATS[fmt])
    compiled = torch.compile(layer, fullgraph=True)
    out, grads = outputs_and_grads(compiled, layer, x)
    ref, want = outputs_and_grads(layer, layer, x)
    assert out.stride() == ref.stride()
    assert relative(out, ref) < 1e-4
    assert all(relative(g, w) < 1e-3 for g, w in zip(grads, want))


@pytest.mark.parametrize("kind", ["depthwise", "grouped"])
def test_a_layer_compiles_under_bf16_autocast(ext, kind):
    torch.manual_seed(0)
    layer = moved(LAYERS[kind]())
    x = torch.randn(2, layer.in_channels, 10, 10)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = outputs_and_grads(compiled, layer, x)
        ref, want = outputs_and_grads(layer, layer, x)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert relative(out.float(), ref.float()) < 2e-2
    assert all(relative(g.float(), w.float()) < 5e-2 for g, w in zip(grads, want))


def test_a_compiled_layer_still_refuses_non_finite_positions(ext):
    layer = moved(LAYERS["depthwise"]())
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(1, 12, 8, 8)
    compiled(x)
    with torch.no_grad():
        layer.positions[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="positions must be finite"):
        compiled(x)


ACU_ZOO = [
    "cifar_resnet29_acu",
    "cifar_resnet29_x4d_acu",
    "cifar_resnet29_x1d_acu_share",
    "cifar_acu29_x1d",
    "mobilenetv2_acu_100",
    "xception_acu",
    "inception_bn_acu",
]


@pytest.mark.parametrize("name", ACU_ZOO)
def test_acu_models_trace_as_one_graph(ext, name):
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_mobilenetv2_acu_compiles_with_inductor_forward_and_backward(ext):
    # The model whose backward once failed on the fake kernels' strides.
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_acu_100", num_classes=10).eval()
    for layer in model.modules():
        if isinstance(layer, ActiveConv2d):
            moved(layer, 1.0)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    out, grads = outputs_and_grads(compiled, model, x)
    ref, want = outputs_and_grads(model, model, x)
    assert relative(out, ref) < 1e-4
    assert all(relative(g, w) < 1e-3 for g, w in zip(grads, want))


def test_an_unfused_acu_model_exports_and_round_trips(ext, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        moved(ActiveConv2d(3, 8, 3)),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        moved(ActiveConv2d(8, 8, 3, groups=8, position_groups=8)),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    program = torch.export.export(model, (x,))
    assert any("planned_conv2d" in str(node.target) for node in program.graph.nodes)
    path = tmp_path / "acu.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    other = torch.randn(2, 3, 12, 12)
    assert relative(loaded.module()(other), model(other)) < 1e-5
    buffer = io.BytesIO()
    torch.export.save(loaded, buffer)
    assert buffer.getbuffer().nbytes > 0


@pytest.mark.parametrize(("groups", "sets"), [(8, 8), (2, 2), (1, 1)], ids=["depthwise", "grouped", "shared"])
def test_the_planned_op_passes_torch_library_opcheck(ext, groups, sets):
    gen = torch.Generator().manual_seed(0)
    args = (
        torch.randn(2, 8, 7, 9, generator=gen).requires_grad_(),
        torch.randn(8, 8 // groups, 9, generator=gen).requires_grad_(),
        ((torch.rand(sets, 9, 2, generator=gen) * 2 - 1) * 1.5).requires_grad_(),
        torch.randn(8, generator=gen).requires_grad_(),
        [1, 1],
        groups,
        "auto",
    )
    results = torch.library.opcheck(torch.ops.acuzoo.planned_conv2d.default, args)
    assert set(results.values()) == {"SUCCESS"}, results
