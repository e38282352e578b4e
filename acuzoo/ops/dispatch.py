"""``active_conv2d``: the one public entry to the ACU operator. It checks the arguments,
applies autocast, and picks the fastest correct path for the device, dtype and spread."""

from __future__ import annotations

import logging
from typing import Literal

import torch

from . import native
from .columns import columns_active_conv2d
from .dense import DENSE_MAX_KERNEL_ELEMENTS, dense_active_conv2d, dense_kernel_elements
from .geometry import column_units, kernel_radius, output_size
from .layout import memory_format_of, to_memory_format
from .reference import reference_active_conv2d
from .validation import autocast_enabled, check_active_conv2d_args, pair

Path = Literal["auto", "native", "dense", "columns", "reference"]
PATHS = ("auto", "native", "dense", "columns", "reference")
log = logging.getLogger(__name__)

# Columns cost per (input channel, synapse, output pixel), in units of one multiply-add of
# the dense conv. The PyTorch columns path interpolates with one strided elementwise op per
# synapse and tap (Python loops, memory-bound); bench/ops.py on 2 CPU cores put its
# forward+backward at the cost of a dense box of ~120 taps for the 64->64 CIFAR layer,
# i.e. ~800 per element; 400 leans towards columns only when the box is clearly larger.
_COLUMN_ELEMENT_COST = 400.0
# Beyond this many (set, input slice) segments the columns path is Python-bound.
_MAX_COLUMN_SEGMENTS = 8
# The native grouped/shared kernels cost about a dense box of this many taps per synapse:
# by cache-sized channels-last tiles (at least 8 channels per group) the 64->64 CIFAR layer
# runs forward+backward at ~1.6x the 3x3 conv at every spread (bench/ops.py), i.e. a box of
# ~14 taps for K = 9; narrower groups go through whole-batch columns, ~4x the conv.
_NATIVE_TILES_TAPS_PER_SYNAPSE = 1.6
_NATIVE_COLUMNS_TAPS_PER_SYNAPSE = 4.0
_NATIVE_TILES_MIN_CHANNELS = 8  # acu_cpu_tiles.cpp: kMinChannelsPerGroup
# Float32 tiles whose synapses stay within this box (the 3x3 grid) run their forward as the
# platform's 3x3 conv (acu_cpu_tiles.cpp: kMaxPlatformRadius).
_NATIVE_TILES_PLATFORM_MAX_BOX = 9
_DENSE_DEPTHWISE_MAX_BOX = 25
_NATIVE_DEPTHWISE_MIN_PIXELS = 49
# The CUDA depthwise kernels keep a channel's table in shared memory (acu_cuda.cu:
# kMaxDepthwiseSynapses); larger kernels (beyond 17x17) take the dense path.
_CUDA_DEPTHWISE_MAX_SYNAPSES = 300


class _DenseBox:
    """The dense kernel's box, read from the positions once and only when asked."""

    def __init__(self, positions: torch.Tensor):
        self._positions = positions
        self._radii: tuple[tuple[int, int], tuple[int, int]] | None = None

    def _read(self) -> tuple[tuple[int, int], tuple[int, int]]:
        # Reads every position (~0.1 ms per axis on a 960-channel layer).
        if self._radii is None:
            self._radii = (kernel_radius(self._positions[..., 0]), kernel_radius(self._positions[..., 1]))
        return self._radii

    def taps(self) -> int:
        (ra, _), (rb, _) = self._read()
        return (2 * ra + 1) * (2 * rb + 1)

    def fits(self, weight_shape) -> bool:
        """Whether the dense path would build this kernel (extended box: with gradients)."""
        (_, ra_ext), (_, rb_ext) = self._read()
        elements = dense_kernel_elements(weight_shape, self._positions.shape, (ra_ext, rb_ext))
        return elements <= DENSE_MAX_KERNEL_ELEMENTS


def choose_path(
    x: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    groups: int,
    native: bool | None = None,
    stride: tuple[int, int] = (1, 1),
) -> str:
    """The fastest correct path for this layer: "native", "dense" or "columns".

    ``native`` says whether the native kernels serve ``x``'s device and dtype (None: find out).
    On CUDA the native kernels are taken (depthwise: 0.41-0.78x the dense path's time on an
    H100, bench/RESULTS.md; the grouped kernels have not been timed on a GPU). On the CPU they
    win for depthwise layers except on small strided planes with a box up to 5x5; elsewhere a cost
    model compares the dense box with the columns. Never "dense" where its kernel would exceed
    DENSE_MAX_KERNEL_ELEMENTS (a far synapse): "columns" then, whose cost does not grow with the
    spread.
    """
    if native is None:
        native = native_serves(x)
    box = _DenseBox(positions)
    path = _fastest_path(x, weight, positions, groups, native, stride, box)
    if path == "dense" and not box.fits(weight.shape):
        return "columns"
    return path


def _fastest_path(x, weight, positions, groups, native: bool, stride, box: _DenseBox) -> str:
    """choose_path's choice by speed alone."""
    c_out, c_per_group, k = weight.shape
    depthwise = groups > 1 and groups == x.shape[1] == c_out
    if native and x.device.type == "cuda":
        return "dense" if depthwise and k > _CUDA_DEPTHWISE_MAX_SYNAPSES else "native"
    if native and depthwise:
        # bench/ops.py (bench/RESULTS.md): on MobileNetV2's planes at 224 px (7x7 and up, B=32)
        # the native kernels beat the dense path at every spread (forward+backward 1-3.5x the
        # channels_last 3x3 conv, against 2.4-12x). At stride 1 they also win on the small
        # planes of MobileNetV2 at 28-32 px (channel blocks; 1x1 to 14x14, B=128: 2-20x faster
        # than the dense path). On the smallest strided planes (under 7x7 out) the dense
        # kernel's conv still wins up to a 5x5 box: the quickstart's training step takes
        # 165 ms with this rule, 175 ms with native everywhere (blocks at every stride).
        out_pixels = ((x.shape[-2] - 1) // stride[0] + 1) * ((x.shape[-1] - 1) // stride[1] + 1)
        small_strided = out_pixels < _NATIVE_DEPTHWISE_MIN_PIXELS and stride != (1, 1)
        return "dense" if small_strided and box.taps() <= _DENSE_DEPTHWISE_MAX_BOX else "native"
    box_taps = box.taps()
    dense_cost = c_out * c_per_group * box_taps
    if native:
        tiled = c_per_group >= _NATIVE_TILES_MIN_CHANNELS
        if tiled and box_taps <= _NATIVE_TILES_PLATFORM_MAX_BOX and x.dtype == torch.float32:
            # Synapses within the 3x3 grid: the tiles' forward is then the platform's 3x3 conv
            # itself (acu_cpu_tiles.cpp) and their backward beats the dense path's (64->64
            # CIFAR layer at init: forward+backward 1.35x the conv against 1.52x).
            return "native"
        taps = _NATIVE_TILES_TAPS_PER_SYNAPSE if tiled else _NATIVE_COLUMNS_TAPS_PER_SYNAPSE
        return "dense" if dense_cost <= c_out * c_per_group * k * taps else "native"
    _, segments = column_units(x.shape[1], c_out, groups, positions.shape[0])
    if len(segments) > _MAX_COLUMN_SEGMENTS:
        return "dense"
    columns_cost = c_out * c_per_group * k + x.shape[1] * k * _COLUMN_ELEMENT_COST
    return "dense" if dense_cost <= columns_cost else "columns"


_checked_devices: dict[str, bool] = {}


def native_serves(x: torch.Tensor) -> bool:
    """Whether the native kernels are built, support ``x``'s dtype, and pass on its device."""
    if not native.supported_dtype(x.device, x.dtype) or not native.native_available(x.device):
        return False
    if x.device.type == "cpu":
        return True  # the CPU kernels are held to the reference by the test suite
    key = str(x.device)
    if key not in _checked_devices:
        _checked_devices[key] = _native_self_check(x.device)
    return _checked_devices[key]


def _native_self_check(device: torch.device) -> bool:
    """First use on a GPU: native against the dense path in float64, forward and gradients.

    A GPU build no test here has run on must not give wrong answers silently; if it
    disagrees, say so once and keep to the PyTorch paths on that device.
    """
    gen = torch.Generator().manual_seed(0)
    for c_in, c_out, groups, sets, stride in ((8, 8, 8, 8, 2), (6, 8, 2, 4, 1)):
        tensors = [
            torch.randn(2, c_in, 9, 7, generator=gen, dtype=torch.float64),
            torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=torch.float64),
            (torch.rand(sets, 9, 2, generator=gen, dtype=torch.float64) * 2 - 1) * 2.5,
            torch.randn(c_out, generator=gen, dtype=torch.float64),
        ]
        results = []
        for run in (native.native_active_conv2d, dense_active_conv2d):
            leaves = [t.to(device).requires_grad_() for t in tensors]
            with torch.enable_grad():
                out = run(*leaves, (stride, stride), groups)
                grads = torch.autograd.grad(out.square().sum(), leaves)
            results.append((out, *grads))
        error = max(float((a - b).detach().abs().max()) for a, b in zip(*results))
        if not error < 1e-8:
            log.warning(
                "acuzoo native kernels disagree with the dense path on %s (max error %.3g); "
                "using the PyTorch paths there",
                device,
                error,
            )
            return False
    return True


def _prefers_channels_last(x: torch.Tensor, groups: int) -> bool:
    # Depthwise convs on CPU run 2-3x faster in channels_last, backward included.
    return x.device.type == "cpu" and groups == x.shape[1] and groups > 1


def active_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    path: Path = "auto",
) -> torch.Tensor:
    """Active convolution (paper eq. 5; conventions in DESIGN.md).

    Args:
        input: (N, C_in, H, W).
        weight: (C_out, C_in // groups, K).
        positions: (P, K, 2) (row, column) displacements of every synapse from the output's
            anchor pixel, origin included; output channel o uses set o // (C_out // P).
        bias: optional (C_out,).
        stride: int or (row, column) pair; output pixel (m, n) reads (m*s + alpha, n*s + beta).
        groups: conv groups, as in ``nn.Conv2d``.
        path: "auto" (default) picks; the others force a path, for tests and benchmarks
            ("native" builds the extension on first use and raises if it cannot).

    Returns:
        (N, C_out, (H - 1) // s + 1, (W - 1) // s + 1).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    check_active_conv2d_args(input, weight, positions, bias, groups)
    stride = pair(stride, "stride")
    if input.is_meta:
        n, hw = input.shape[0], output_size(tuple(input.shape[-2:]), stride)
        return input.new_empty((n, weight.shape[0], *hw))
    device_type = input.device.type
    if autocast_enabled(device_type):
        # Low-precision compute, but the kernel and position slopes are built in fp32 first.
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _run(input.to(dtype), weight, positions, bias, stride, groups, path)
    return _run(input, weight, positions, bias, stride, groups, path)


def _run(input, weight, positions, bias, stride, groups, path) -> torch.Tensor:
    if positions.dtype not in (torch.float32, torch.float64):
        # A model cast to fp16/bf16: sub-pixel positions need fp32 to be worth learning.
        positions = positions.float()
    if path == "reference":
        return reference_active_conv2d(input, weight, positions, bias, stride, groups)
    if path == "auto":
        path = choose_path(input, weight, positions, groups, stride=stride)
    if path == "native":
        return native.native_active_conv2d(input, weight, positions, bias, stride, groups)
    if path == "columns":
        out_hw = output_size(tuple(input.shape[-2:]), stride)
        return columns_active_conv2d(input, weight, positions, bias, stride, groups, out_hw)
    return _dense_in_input_format(input, weight, positions, bias, stride, groups)


def _dense_in_input_format(input, weight, positions, bias, stride, groups) -> torch.Tensor:
    """The dense path, run channels_last where that is faster; the output and the input
    gradient come back in the input's memory format all the same."""
    memory_format = memory_format_of(input)
    if memory_format != torch.channels_last and _prefers_channels_last(input, groups):
        input = to_memory_format(input, torch.channels_last)
    out = dense_active_conv2d(input, weight, positions, bias, stride, groups)
    return out.contiguous(memory_format=memory_format)


__all__ = ["active_conv2d", "choose_path", "PATHS"]
