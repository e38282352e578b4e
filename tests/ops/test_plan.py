"""The kernel plan: ``explain`` tells which kernels a call runs and why, and that is what runs.

What ran is read from the profiler: every kernel labels its work ``acuzoo:<name>:<direction>``
(the native kernels in C++, the PyTorch kernels' forwards in Python).
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from acuzoo.nn import ActiveConv2d
from acuzoo.ops import KERNELS, THRESHOLDS, active_conv2d, dispatch, explain, force

CPU_KERNELS = [name for name, k in KERNELS.items() if k.device in ("any", "cpu")]


def kernels_that_ran(run) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return {e.name for e in prof.events() if e.name.startswith("acuzoo:") and not e.name.startswith("acuzoo::")}


def expected_labels(plan) -> set[str]:
    labels = {f"acuzoo:{plan.forward}:forward"}
    if KERNELS[plan.backward].native:
        labels.add(f"acuzoo:{plan.backward}:backward")
    return labels


def call(c_in, c_out, groups, sets, hw, stride=1, batch=2, spread=None, channels_last=False, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c_in, *hw, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=dtype)
    grid = torch.tensor([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=dtype)
    positions = grid.expand(sets, 9, 2).clone()
    if spread is not None:
        positions = (torch.rand(sets, 9, 2, generator=gen, dtype=dtype) * 2 - 1) * spread
    return {"weight": weight, "positions": positions, "bias": None, "stride": stride, "groups": groups}, x


# A call on which the plan picks each kernel, in the direction that names it.
PICKS = {
    "dense": (call(8, 8, 8, 8, (8, 8), stride=2), "forward"),
    "cpu.depthwise_planes": (call(8, 8, 8, 8, (14, 14), spread=1.5), "forward"),
    "cpu.depthwise_blocks": (
        call(8, 8, 8, 8, (14, 14), spread=0.9, channels_last=True, dtype=torch.float64),
        "forward",
    ),
    "cpu.depthwise_bands": (call(8, 8, 8, 8, (7, 7), spread=3.0, channels_last=True), "backward"),
    "cpu.merged_conv": (call(8, 8, 8, 8, (14, 14), channels_last=True), "forward"),
    "cpu.grouped_tiles": (call(16, 16, 2, 2, (9, 9), spread=1.5, dtype=torch.float64), "forward"),
    "cpu.columns": (call(8, 8, 4, 4, (9, 9), spread=3.0), "forward"),
}


def run_call(arguments, x):
    leaves = [t.requires_grad_() for t in (arguments["weight"], arguments["positions"])]
    out = active_conv2d(x.requires_grad_(), *leaves, None, arguments["stride"], arguments["groups"])
    out.sum().backward()


@pytest.mark.parametrize("name", PICKS)
def test_the_plan_picks_each_kernel_somewhere_and_that_kernel_runs(ext, name):
    (arguments, x), direction = PICKS[name]
    plan = explain(arguments, x)
    assert getattr(plan, direction) == name, str(plan)
    assert kernels_that_ran(lambda: run_call(arguments, x)) == expected_labels(plan)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_a_forced_kernel_is_what_explain_reports_and_what_runs(ext, name):
    depthwise = KERNELS[name].depthwise_only
    arguments, x = call(8, 8, 8 if depthwise else 2, 8 if depthwise else 2, (7, 9), spread=1.5)
    context = force(name) if "backward" in KERNELS[name].directions else force(forward=name)
    with context:
        plan = explain(arguments, x)
        ran = kernels_that_ran(lambda: run_call(arguments, x))
    assert plan.forward == name
    assert ran == expected_labels(plan)


def mobilenet_depthwise_layers():
    """MobileNetV2 x1.0's depthwise layers at 224 px: (channels, input size, stride)."""
    return [
        (32, 112, 1),
        (96, 112, 2),
        (144, 56, 1),
        (144, 56, 2),
        (192, 28, 1),
        (192, 28, 2),
        (384, 14, 1),
        (576, 14, 1),
        (576, 14, 2),
        (960, 7, 1),
    ]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("spread", [None, 1.5, 3.0], ids=["grid", "1.5", "3"])
def test_on_mobilenet_layers_explain_names_what_runs(ext, channels_last, spread):
    for c, size, stride in mobilenet_depthwise_layers()[::3]:
        layer = ActiveConv2d(c, c, 3, stride=stride, groups=c, position_groups=c)
        if spread is not None:
            with torch.no_grad():
                layer.positions.uniform_(-spread, spread)
        x = torch.randn(1, c, size // 4, size // 4)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        plan = explain(layer, x)
        ran = kernels_that_ran(lambda layer=layer, x=x: layer(x.requires_grad_()).sum().backward())
        assert ran == expected_labels(plan), (c, size, stride, str(plan))


def test_explain_gives_reasons_and_prints_them(ext):
    arguments, x = PICKS["cpu.depthwise_blocks"][0]
    plan = explain(arguments, x)
    assert plan.why and all(isinstance(reason, str) and reason for reason in plan.why)
    assert plan.forward in str(plan) and plan.why[0] in str(plan)


def test_explain_takes_a_layer_a_mapping_or_a_tuple_alike(ext):
    layer = ActiveConv2d(8, 8, 3, groups=8, position_groups=8)
    x = torch.randn(2, 8, 14, 14)
    as_tuple = (layer.weight, layer.full_positions(), layer.bias, layer.stride, layer.groups)
    as_mapping = dict(zip(("weight", "positions", "bias", "stride", "groups"), as_tuple))
    assert explain(layer, x) == explain(as_tuple, x) == explain(as_mapping, x)


def test_explain_refuses_what_is_not_a_layer_or_arguments():
    with pytest.raises(TypeError, match="explain takes an ACU layer"):
        explain(torch.nn.Conv2d(3, 3, 3), torch.randn(1, 3, 5, 5))


def test_without_native_kernels_the_plan_keeps_to_pytorch(monkeypatch):
    monkeypatch.setattr(dispatch, "native_serves", lambda x: False)
    for name in ("cpu.depthwise_blocks", "cpu.grouped_tiles", "cpu.columns"):
        arguments, x = PICKS[name][0]
        plan = explain(arguments, x)
        assert plan.forward == plan.backward and not KERNELS[plan.forward].native
        assert any("no native kernels" in reason for reason in plan.why)


def test_force_is_thread_local_and_restores_the_plan(ext):
    arguments, x = PICKS["cpu.depthwise_blocks"][0]
    planned = explain(arguments, x)
    seen = {}

    def other_thread():
        seen["plan"] = explain(arguments, x)

    with force("cpu.depthwise_planes"):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert explain(arguments, x).forward == "cpu.depthwise_planes"
    assert seen["plan"] == planned
    assert explain(arguments, x) == planned


def test_force_refuses_unknown_names_and_mixed_arguments():
    with pytest.raises(ValueError, match="must be one of acuzoo.ops.KERNELS"), force("cpu.fastest"):
        pass
    with pytest.raises(ValueError, match="a name or forward=/backward="), force("dense", forward="dense"):
        pass
    with pytest.raises(ValueError, match="runs both directions"), force(forward="dense", backward="cpu.columns"):
        pass


def test_path_takes_auto_native_or_any_kernel_name():
    assert ("auto", "native", *KERNELS) == dispatch.PATHS
    arguments, x = PICKS["dense"][0]
    with pytest.raises(ValueError, match="path must be 'auto', 'native' or a name from acuzoo.ops.KERNELS"):
        active_conv2d(x, arguments["weight"], arguments["positions"], path="fast")


def test_every_threshold_has_a_value_and_a_one_line_reason():
    for name, entry in THRESHOLDS.items():
        assert entry.value > 0, name
        assert entry.reason and "\n" not in entry.reason, name


def test_no_native_test_hook_ships_in_the_op_namespace(ext):
    ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("acuzoo::")]
    assert not [n for n in ops if n.startswith("acuzoo::_set")], ops


def test_a_remembered_plan_is_the_plan_of_the_call_at_hand(ext):
    # Plans are remembered by a key that reads the spread through its signature only: calls
    # whose positions differ but share it must get what a fresh plan would give them.
    gen = torch.Generator().manual_seed(1)
    geometries = [(arguments, x) for (arguments, x), _ in PICKS.values()]
    for c, size, stride in mobilenet_depthwise_layers()[::2]:
        for channels_last in (False, True):
            arguments, x = call(c, c, c, c, (size // 4, size // 4), stride=stride, channels_last=channels_last)
            geometries.append((arguments, x))
    dispatch._plans.clear()
    hits = 0
    for arguments, x in geometries:
        sets, k, _ = arguments["positions"].shape
        for scale in (0.5, 1.0, 1.5, 2.0, 3.0, 4.5):
            for integers in (False, True):
                positions = (torch.rand(sets, k, 2, generator=gen, dtype=x.dtype) * 2 - 1) * scale
                if integers:
                    positions = positions.round()
                args = (x, arguments["weight"], positions, dispatch.pair(arguments["stride"], "stride"))
                spread = dispatch.Spread.of(positions)
                fresh = dispatch._plan(*args, arguments["groups"], "auto", True, spread, (None, None))
                remembered = len(dispatch._plans)
                assert dispatch.plan_for(*args, arguments["groups"]) == fresh, (tuple(x.shape), spread)
                hits += len(dispatch._plans) == remembered
    assert hits > 0  # the key did repeat: the check above compared remembered plans too
