"""The kernel plan: every way the ACU runs has a name, one function chooses, ``explain`` says why.

``KERNELS`` lists the implementations. ``plan_call`` picks the forward and the backward
kernel of one call from its geometry, dtype, device, memory format, the positions' spread
and the thread count, with every threshold read from ``THRESHOLDS``. ``explain`` returns
that choice for a layer or a set of arguments; ``force`` overrides it for tests and
benchmarks. The native kernels run exactly the names they are given (csrc/ holds no rule
that chooses between them).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from .dense import DENSE_MAX_KERNEL_ELEMENTS, dense_kernel_elements
from .geometry import column_units
from .validation import check_active_conv2d_args, pair

BOTH = ("forward", "backward")


@dataclass(frozen=True)
class Kernel:
    """One implementation of the operator, and the calls it can serve."""

    name: str
    device: str  # "any", "cpu" or "cuda"
    directions: tuple[str, ...]
    summary: str
    native: bool = False
    depthwise_only: bool = False
    not_depthwise: bool = False
    stride_one_only: bool = False

    def refusal(self, call: Call, direction: str) -> str | None:
        """Why this kernel cannot serve ``direction`` of ``call``; None when it can."""
        if direction not in self.directions:
            return f"kernel {self.name!r} has no {direction} (it runs: {', '.join(self.directions)})"
        if self.device != "any" and call.device_type != self.device:
            return f"kernel {self.name!r} runs on {self.device} tensors, got {call.device_type}"
        if self.depthwise_only and not call.depthwise:
            return f"kernel {self.name!r} serves depthwise layers only (groups == C_in == C_out)"
        if self.not_depthwise and call.depthwise:
            return f"kernel {self.name!r} does not serve depthwise layers"
        if self.stride_one_only and call.stride != (1, 1):
            return f"kernel {self.name!r} serves stride (1, 1) only, got {call.stride}"
        if self.native and not call.native:
            return (
                f"kernel {self.name!r} needs the native library for {call.device_type} "
                f"{str(call.dtype).removeprefix('torch.')}, which is not available"
            )
        return None


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in (
        Kernel("reference", "any", BOTH, "eq. 5 written plainly: interpolate every read, sum (float64-exact, slow)"),
        Kernel("dense", "any", BOTH, "the merged kernel (Theorem 2) by PyTorch ops, run by the platform's conv"),
        Kernel("columns", "any", BOTH, "bilinear columns by PyTorch ops, contracted by matmul"),
        Kernel(
            "cpu.depthwise_planes",
            "cpu",
            BOTH,
            "one channel's planes (stacked at stride 1, by phases when strided), one loop over all taps",
            native=True,
            depthwise_only=True,
        ),
        Kernel(
            "cpu.depthwise_blocks",
            "cpu",
            BOTH,
            "merged kernel as a depthwise correlation over vectors of channels, reading channels-last in place",
            native=True,
            depthwise_only=True,
        ),
        Kernel(
            "cpu.depthwise_bands",
            "cpu",
            BOTH,
            "merged kernel over vectors of channels copied by bands with zero borders",
            native=True,
            depthwise_only=True,
            stride_one_only=True,
        ),
        Kernel(
            "cpu.merged_conv",
            "cpu",
            ("forward",),
            "the merged kernel (Theorem 2) built natively and run by the platform's conv",
            native=True,
        ),
        Kernel(
            "cpu.grouped_tiles",
            "cpu",
            BOTH,
            "bilinear columns of a few output rows at a time, channels-last, contracted by GEMM in cache",
            native=True,
            not_depthwise=True,
        ),
        Kernel("cpu.columns", "cpu", BOTH, "bilinear columns of the whole batch, contracted by GEMM", native=True),
        Kernel(
            "cuda.depthwise",
            "cuda",
            BOTH,
            "one thread per output element, each channel's synapse table in shared memory",
            native=True,
            depthwise_only=True,
        ),
        Kernel("cuda.columns", "cuda", BOTH, "bilinear columns on the GPU, contracted by batched GEMM", native=True),
    )
}
PYTORCH_KERNELS = tuple(name for name, k in KERNELS.items() if not k.native)


@dataclass(frozen=True)
class Threshold:
    value: float
    reason: str


# Every number the plan compares against, once. The measurements behind them: bench/HISTORY.md.
THRESHOLDS: dict[str, Threshold] = {
    "small_strided_pixels": Threshold(
        49, "depthwise output planes under 7x7 at stride 2: the dense path's conv beats the native kernels"
    ),
    "small_strided_box": Threshold(25, "... but only while the merged kernel's box stays within 5x5 taps"),
    "blocks_taps_per_pixel": Threshold(
        64, "channel blocks pay the merged kernel's whole box per pixel; beyond this many taps the planes win"
    ),
    "in_place_interior": Threshold(
        0.75, "blocks read in place while this share of an output row reads clear of the edges, else by bands"
    ),
    "depthwise_merged_radius": Threshold(
        3, "float32 depthwise forward: the platform's conv runs merged kernels up to 7x7 faster than the blocks"
    ),
    "grouped_merged_radius": Threshold(
        1, "float32 grouped forward: within the 3x3 grid the platform's conv beats the tiles' columns"
    ),
    "tiles_min_channels": Threshold(
        8, "the tiles vectorise over a group's channels; narrower groups go by whole-batch columns"
    ),
    "native_tiles_taps": Threshold(
        1.6, "cost of one tiled synapse, in dense taps: the dense path wins while its box is cheaper"
    ),
    "native_columns_taps": Threshold(4.0, "cost of one whole-batch columns synapse, in dense taps"),
    "pytorch_column_cost": Threshold(
        400.0, "PyTorch columns: cost per (input channel, synapse, pixel) in multiply-adds of the dense conv"
    ),
    "pytorch_column_segments": Threshold(
        8, "beyond this many (set, input slice) segments the PyTorch columns are bound by Python"
    ),
}


def threshold(name: str) -> float:
    return THRESHOLDS[name].value


@dataclass(frozen=True)
class Spread:
    """The positions' extent per axis (row, column): smallest and largest displacement."""

    low: tuple[float, float]
    high: tuple[float, float]

    @staticmethod
    def of(positions: torch.Tensor) -> Spread:
        """One reduction over the positions (their finiteness is read from the same numbers).

        Positions without values (meta or fake tensors, or while torch.compile traces) give
        the 3x3 grid's spread: every kernel is exact at any spread, only its speed depends on
        it."""
        if not values_readable(positions):
            return GRID_SPREAD
        # One extent for both axes: two whole-tensor reductions cost a few microseconds, a
        # per-axis reduction several times that, on every call. The boxes it gives are the
        # per-axis ones or slightly larger.
        flat = positions.detach()
        if flat.numel() == 0:
            return Spread((0.0, 0.0), (0.0, 0.0))
        low, high = (float(t) for t in torch.aminmax(flat))
        return Spread((low, low), (high, high))

    def signature(self) -> tuple:
        """What the plan reads of the spread: per axis the integer box around it and whether
        its ends lie on integers (they set the radius of the central-difference slope). Two
        spreads with one signature get one plan."""
        return tuple(
            (math.floor(low), math.ceil(high), low.is_integer(), high.is_integer())
            for low, high in zip(self.low, self.high)
        )

    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (*self.low, *self.high))

    def radius(self, axis: int) -> tuple[int, int]:
        """(tight, extended) half-width of the symmetric integer box: tight holds every tap with
        a non-zero bilinear weight; extended adds one where a synapse sits on an integer at the
        border, whose central-difference slope reads the tap beyond it."""
        low, high = self.low[axis], self.high[axis]
        tight = max(math.ceil(high), -math.floor(low), 0)
        on_border = (high == tight) or (low == -tight)
        return tight, tight + int(on_border)

    def value_box(self, axis: int, size: int) -> tuple[int, int]:
        """Integer taps with a non-zero bilinear weight on this axis that can touch a plane of
        ``size`` pixels: (first, last), empty when first > last."""
        return max(math.floor(self.low[axis]), -(size - 1)), min(math.ceil(self.high[axis]), size - 1)


GRID_SPREAD = Spread((-1.0, -1.0), (1.0, 1.0))


def values_readable(t: torch.Tensor) -> bool:
    """Whether ``t`` has values the host can read now (not meta, not fake, not being traced)."""
    if t.is_meta or torch.compiler.is_compiling():
        return False
    # A plain tensor or parameter is never fake; only subclasses need the full test.
    return type(t) in (torch.Tensor, torch.nn.Parameter) or not is_fake(t)


def planning_threads() -> int:
    """The thread count the plan reads: one while tracing, so a traced plan never depends on
    the host's setting."""
    return 1 if torch.compiler.is_compiling() else torch.get_num_threads()


@dataclass(frozen=True)
class Call:
    """What the plan reads of one call."""

    batch: int
    c_in: int
    c_out: int
    c_per_group: int
    synapses: int
    sets: int
    groups: int
    height: int
    width: int
    stride: tuple[int, int]
    dtype: torch.dtype
    device_type: str
    channels_last: bool
    threads: int
    native: bool
    spread: Spread

    @property
    def depthwise(self) -> bool:
        return self.groups == self.c_in == self.c_out and self.groups > 1

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.height - 1) // self.stride[0] + 1, (self.width - 1) // self.stride[1] + 1

    def dense_taps(self) -> int:
        """Taps of the dense path's symmetric box."""
        (ra, _), (rb, _) = self.spread.radius(0), self.spread.radius(1)
        return (2 * ra + 1) * (2 * rb + 1)

    def dense_fits(self) -> bool:
        """Whether the dense path would build its kernel (extended box: with gradients)."""
        radius = (self.spread.radius(0)[1], self.spread.radius(1)[1])
        shape = (self.c_out, self.c_per_group, self.synapses)
        return dense_kernel_elements(shape, (self.sets, self.synapses), radius) <= DENSE_MAX_KERNEL_ELEMENTS

    def merged_radius(self) -> int | None:
        """Half-width of the natively merged kernel (taps on the plane), None when no tap is."""
        (r0, r1), (c0, c1) = self.spread.value_box(0, self.height), self.spread.value_box(1, self.width)
        if r0 > r1 or c0 > c1:
            return None
        return max(-r0, r1, -c0, c1)


@dataclass(frozen=True)
class Plan:
    """Which kernel runs each direction of a call, and why."""

    forward: str
    backward: str
    why: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        head = self.forward if self.forward == self.backward else f"{self.forward} / {self.backward}"
        return head + "".join(f"\n  - {reason}" for reason in self.why)


def describe_call(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    stride: tuple[int, int],
    groups: int,
    native: bool,
    spread: Spread | None = None,
) -> Call:
    from .layout import memory_format_of

    n, c_in, h, w = input.shape
    c_out, c_per_group, k = weight.shape
    return Call(
        batch=n,
        c_in=c_in,
        c_out=c_out,
        c_per_group=c_per_group,
        synapses=k,
        sets=positions.shape[0],
        groups=groups,
        height=h,
        width=w,
        stride=stride,
        dtype=input.dtype,
        device_type=input.device.type,
        channels_last=memory_format_of(input) == torch.channels_last,
        threads=planning_threads(),
        native=native,
        spread=spread if spread is not None else Spread.of(positions),
    )


def plan_call(call: Call, cuda_depthwise_max_synapses: int | None = None, allow_pytorch: bool = True) -> Plan:
    """The forward and backward kernels for ``call``, by speed, among those that serve it.

    ``allow_pytorch=False`` keeps to the native kernels (``path="native"``)."""
    why: list[str] = []
    if not allow_pytorch and not call.native:
        raise ValueError(
            f"no native kernels serve {call.device_type} {str(call.dtype).removeprefix('torch.')} here "
            "(see python -m acuzoo.ops.native --info)"
        )
    if call.native and call.device_type == "cuda":
        plan = _plan_cuda(call, cuda_depthwise_max_synapses, allow_pytorch, why)
    elif call.native and call.device_type == "cpu":
        plan = _plan_cpu(call, allow_pytorch, why)
    else:
        why.append(f"no native kernels for {call.device_type} {str(call.dtype).removeprefix('torch.')}")
        plan = _plan_pytorch(call, why)
    if plan.forward == "dense" and not call.dense_fits():
        why.append(f"the dense kernel would exceed {DENSE_MAX_KERNEL_ELEMENTS:,} elements (a far synapse)")
        fallback = "cpu.columns" if call.native and call.device_type == "cpu" else "columns"
        if call.native and call.device_type == "cuda":
            fallback = "cuda.columns"
        return Plan(fallback, fallback, tuple(why))
    return Plan(plan.forward, plan.backward, tuple(why))


def _plan_cuda(call: Call, max_synapses: int | None, allow_pytorch: bool, why: list[str]) -> Plan:
    if not call.depthwise:
        why.append("CUDA, not depthwise: columns and batched GEMM")
        return Plan("cuda.columns", "cuda.columns")
    if max_synapses is not None and call.synapses > max_synapses:
        why.append(f"CUDA depthwise with K = {call.synapses} > {max_synapses}: the table outgrows shared memory")
        return Plan("dense", "dense") if allow_pytorch else Plan("cuda.columns", "cuda.columns")
    why.append("CUDA depthwise: the direct kernels beat the dense path at every spread")
    return Plan("cuda.depthwise", "cuda.depthwise")


def _plan_cpu(call: Call, allow_pytorch: bool, why: list[str]) -> Plan:
    if call.depthwise:
        return _plan_cpu_depthwise(call, allow_pytorch, why)
    return _plan_cpu_grouped(call, allow_pytorch, why)


def _plan_cpu_depthwise(call: Call, allow_pytorch: bool, why: list[str]) -> Plan:
    out_h, out_w = call.out_size
    if (
        allow_pytorch
        and call.stride != (1, 1)
        and out_h * out_w < threshold("small_strided_pixels")
        and call.dense_taps() <= threshold("small_strided_box")
    ):
        why.append(
            f"small strided plane ({out_h}x{out_w} out) with a {call.dense_taps()}-tap box: the dense path's conv"
        )
        return Plan("dense", "dense")
    taps = _taps_per_pixel(call)
    if not call.channels_last:
        why.append("NCHW input: planes (channel blocks would pay two transposes)")
        return Plan("cpu.depthwise_planes", "cpu.depthwise_planes")
    if taps > threshold("blocks_taps_per_pixel"):
        why.append(f"merged kernel reads {taps:.0f} taps per pixel: planes (each synapse's own taps)")
        return Plan("cpu.depthwise_planes", "cpu.depthwise_planes")
    blocks = _blocks_variant(call)
    why.append(f"channels_last, merged kernel of {taps:.0f} taps per pixel: channel blocks ({blocks})")
    forward = blocks
    radius = call.merged_radius()
    if call.dtype == torch.float32 and radius is not None and radius <= threshold("depthwise_merged_radius"):
        why.append(f"float32 merged kernel of radius {radius}: the platform's conv runs the forward")
        forward = "cpu.merged_conv"
    return Plan(forward, blocks)


def _taps_per_pixel(call: Call) -> float:
    """Merged-kernel taps read per output pixel, averaged over the plane (rows and columns of
    the box that fall off the plane cost nothing)."""

    def on_plane(axis: int, size: int) -> float:
        first, last = call.spread.value_box(axis, size)
        return sum(max(0, size - abs(d)) for d in range(first, last + 1)) / size

    return on_plane(0, call.height) * on_plane(1, call.width)


def _blocks_variant(call: Call) -> str:
    """In place or by bands: in place unless many output pixels of a row read off its edges."""
    if call.stride != (1, 1):
        return "cpu.depthwise_blocks"
    first, last = call.spread.value_box(1, call.width)
    out_w = call.out_size[1]
    inner = max(0, min(out_w - 1, call.width - 1 - last) - max(0, -first) + 1)
    return "cpu.depthwise_blocks" if inner >= threshold("in_place_interior") * out_w else "cpu.depthwise_bands"


def _plan_cpu_grouped(call: Call, allow_pytorch: bool, why: list[str]) -> Plan:
    tiled = call.c_per_group >= threshold("tiles_min_channels")
    box_taps = call.dense_taps()
    radius = call.merged_radius()
    within_grid = radius is not None and radius <= threshold("grouped_merged_radius")
    if allow_pytorch and not (tiled and within_grid and call.dtype == torch.float32):
        per_synapse = threshold("native_tiles_taps") if tiled else threshold("native_columns_taps")
        if box_taps <= call.synapses * per_synapse:
            why.append(f"a {box_taps}-tap box costs less than {call.synapses} native synapses: dense path")
            return Plan("dense", "dense")
    if tiled:
        why.append(f"{call.c_per_group} channels per group: tiles")
        forward = backward = "cpu.grouped_tiles"
        if within_grid and call.dtype == torch.float32:
            why.append("float32, every tap within the 3x3 grid: the platform's conv runs the forward")
            forward = "cpu.merged_conv"
        if call.batch < call.threads:
            why.append(f"batch {call.batch} < {call.threads} threads: whole-batch columns for the backward")
            backward = "cpu.columns"
        return Plan(forward, backward)
    why.append(f"{call.c_per_group} channels per group: whole-batch columns")
    return Plan("cpu.columns", "cpu.columns")


def _plan_pytorch(call: Call, why: list[str]) -> Plan:
    _, segments = column_units(call.c_in, call.c_out, call.groups, call.sets)
    if len(segments) > threshold("pytorch_column_segments"):
        why.append(f"{len(segments)} column segments: dense path")
        return Plan("dense", "dense")
    dense_cost = call.c_out * call.c_per_group * call.dense_taps()
    columns_cost = call.c_out * call.c_per_group * call.synapses + (
        call.c_in * call.synapses * threshold("pytorch_column_cost")
    )
    if dense_cost <= columns_cost:
        why.append(f"a {call.dense_taps()}-tap box: the dense path costs less than the columns")
        return Plan("dense", "dense")
    why.append(f"a {call.dense_taps()}-tap box: the columns cost less than the dense path")
    return Plan("columns", "columns")


# ---- forcing -------------------------------------------------------------------------


_forced = threading.local()


def forced() -> tuple[str | None, str | None]:
    """The (forward, backward) names forced in this thread, None where the plan chooses."""
    return getattr(_forced, "pair", (None, None))


@contextlib.contextmanager
def force(name: str | None = None, *, forward: str | None = None, backward: str | None = None) -> Iterator[None]:
    """Run the named kernel(s) in this thread, whatever the plan says (tests, benchmarks).

    ``force(name)`` forces every direction ``name`` runs (``"cpu.merged_conv"``: the forward
    only; the backward stays planned); ``forward=``/``backward=`` force one direction each.
    A PyTorch kernel ("reference", "dense", "columns") runs both directions. A call the
    forced kernel cannot serve raises ValueError naming the kernel and why. Thread-local:
    other threads keep their own plan.
    """
    if name is not None:
        if forward is not None or backward is not None:
            raise ValueError("force takes a name or forward=/backward=, not both")
        forward, backward = directions_of(name)
    for arg, value in (("forward", forward), ("backward", backward)):
        if value is not None:
            _known(value, arg)
    pytorch = [n for n in (forward, backward) if n in PYTORCH_KERNELS]
    if pytorch and forward != backward:
        raise ValueError(
            f"the PyTorch kernel {pytorch[0]!r} runs both directions; force it alone, got forward={forward!r}, "
            f"backward={backward!r}"
        )
    previous = forced()
    _forced.pair = (forward, backward)
    try:
        yield
    finally:
        _forced.pair = previous


def directions_of(name: str) -> tuple[str, str | None]:
    """(forward, backward) a kernel's name forces: every direction the kernel runs."""
    kernel = _known(name, "name")
    return name, (name if "backward" in kernel.directions else None)


def _known(name: str, arg: str) -> Kernel:
    if name not in KERNELS:
        raise ValueError(f"{arg} must be one of acuzoo.ops.KERNELS {tuple(KERNELS)}, got {name!r}")
    return KERNELS[name]


def apply_forced(call: Call, planned: Plan, forward: str | None, backward: str | None) -> Plan:
    """The plan with the forced directions replaced; refuses a kernel that cannot serve them."""
    if forward is None and backward is None:
        return planned
    why = list(planned.why)
    for name, direction in ((forward, "forward"), (backward, "backward")):
        if name is not None:
            _check_serves(name, call, direction)
            why.append(f"{direction} forced to {name}")
    new_forward, new_backward = forward or planned.forward, backward or planned.backward
    if (new_forward in PYTORCH_KERNELS) != (new_backward in PYTORCH_KERNELS):
        # A PyTorch kernel runs both directions: the planned side follows the forced one.
        native = plan_call(call, allow_pytorch=False)
        if forward is None:
            new_forward = new_backward if new_backward in PYTORCH_KERNELS else native.forward
        else:
            new_backward = new_forward if new_forward in PYTORCH_KERNELS else native.backward
        why.append(f"paired with {new_forward if forward is None else new_backward}")
    return Plan(new_forward, new_backward, tuple(why))


def _check_serves(name: str, call: Call, direction: str) -> None:
    reason = KERNELS[name].refusal(call, direction)
    if reason is not None:
        raise ValueError(reason)


# ---- explain -------------------------------------------------------------------------


def explain(layer_or_arguments: Any, input: torch.Tensor) -> Plan:
    """The plan a call would run, with its reasons; forced kernels included.

    ``layer_or_arguments``: an ACU layer (anything with ``weight``, ``full_positions()``,
    ``stride`` and ``groups``, e.g. ``acuzoo.ActiveConv2d``), or the operator's arguments as a
    mapping (``weight``, ``positions``, optional ``bias``, ``stride``, ``groups``) or a tuple
    ``(weight, positions, bias, stride, groups)``. ``input``: an input tensor (N, C, H, W).
    """
    from .dispatch import plan_for

    weight, positions, bias, stride, groups = _arguments_of(layer_or_arguments)
    check_active_conv2d_args(input, weight, positions, bias, groups)
    if positions.dtype not in (torch.float32, torch.float64):
        positions = positions.float()
    return plan_for(input, weight, positions, pair(stride, "stride"), groups)


def _arguments_of(obj: Any) -> tuple:
    if hasattr(obj, "full_positions") and hasattr(obj, "weight"):
        return obj.weight, obj.full_positions(), getattr(obj, "bias", None), obj.stride, obj.groups
    if isinstance(obj, dict):
        return obj["weight"], obj["positions"], obj.get("bias"), obj.get("stride", 1), obj.get("groups", 1)
    if isinstance(obj, (tuple, list)) and len(obj) == 5:
        return tuple(obj)
    raise TypeError(
        "explain takes an ACU layer, a mapping with weight/positions/bias/stride/groups, or a tuple "
        f"(weight, positions, bias, stride, groups); got {type(obj).__name__}"
    )
