"""``ActiveConv2d``: a convolution whose synapses have learnable real-valued positions."""

import math

import torch
from torch import nn

from ..ops import active_conv2d, extrapolated_kernel
from ..ops.geometry import kernel_radius
from ..ops.validation import pair

# The largest kernel side ``to_conv2d`` / ``fuse_acu`` build by default: the dense kernel grows with
# the square of the farthest synapse's reach, and beyond this a conv is no deployment format.
MAX_FUSED_KERNEL_SIZE = 63


def grid_positions(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """The (K, 2) row-major (row, column) offsets of a k x k conv, centred on the origin."""
    kh, kw = kernel_size
    rows = (torch.arange(kh) - kh // 2) * dilation[0]
    cols = (torch.arange(kw) - kw // 2) * dilation[1]
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)
    return grid.reshape(-1, 2).float()


def _movable_grid(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """The grid without its centre, the origin synapse that is not a parameter."""
    grid = grid_positions(kernel_size, dilation)
    centre = grid.shape[0] // 2
    return torch.cat([grid[:centre], grid[centre + 1 :]])


def insert_origin(movable: torch.Tensor, origin_index: int) -> torch.Tensor:
    """(P, K, 2) from the (P, K - 1, 2) movable synapses: the fixed (0, 0) goes at origin_index."""
    origin = movable.new_zeros(movable.shape[0], 1, 2)
    return torch.cat([movable[:, :origin_index], origin, movable[:, origin_index:]], 1)


def conv2d_refusal(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` is not an ACU on its grid (Lemma 1 needs odd kernels, 'same' zero padding)."""
    kh, kw = conv.kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        return f"kernel_size {conv.kernel_size} is even; an ACU needs an odd kernel with a centre"
    if conv.padding_mode != "zeros":
        return f"padding_mode '{conv.padding_mode}' is not zero padding"
    if type(conv) is not nn.Conv2d and type(conv).forward is not nn.Conv2d.forward:
        return (
            f"{type(conv).__name__} overrides forward (e.g. timm's Conv2dSame pads at run time, asymmetrically "
            "with stride 2), which an ACU's centred grid cannot represent"
        )
    same = (conv.dilation[0] * (kh // 2), conv.dilation[1] * (kw // 2))
    padding = conv.padding
    if padding == "same" and conv.stride == (1, 1):
        return None
    if isinstance(padding, str) or tuple(padding) != same:
        return f"padding {padding!r} is not 'same' padding {same} for this kernel and dilation"
    return None


class ActiveConv2d(nn.Module):
    """Active convolution unit (ACU), grouped and depthwise included.

    Args:
        in_channels, out_channels, stride, groups, bias, dilation: as in ``nn.Conv2d``.
        kernel_size: odd int or pair; the initial shape is this grid (dilated), K = kh * kw.
        position_groups: P, the number of position sets; default ``groups`` (grouped and
            depthwise ACU). P = 1 shares one shape across the layer, as the original ACU.

    The centre synapse stays at the origin; ``positions`` holds the other K - 1 of every set,
    shape (P, K - 1, 2), as (row, column) displacements. At init the layer computes exactly
    ``nn.Conv2d(kernel_size, padding=dilation * (k // 2))`` with the same weight.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        position_groups: int | None = None,
        bias: bool = False,
        dilation: int | tuple[int, int] = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kernel_size = pair(kernel_size, "kernel_size")
        if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the grid needs a centre), got {kernel_size}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            # A bool is an int to Python; nn.Conv2d takes groups=True and then fails in forward.
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})"
            )
        position_groups = groups if position_groups is None else position_groups
        if (
            not isinstance(position_groups, int)
            or isinstance(position_groups, bool)
            or position_groups < 1
            or out_channels % position_groups
        ):
            raise ValueError(
                f"position_groups ({position_groups}) must be an int >= 1 dividing out_channels ({out_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.groups = groups
        self.position_groups = position_groups
        factory = {"device": device, "dtype": dtype}
        k = kernel_size[0] * kernel_size[1]
        self.num_synapses = k
        self.origin_index = k // 2
        movable = _movable_grid(kernel_size, self.dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, k, **factory))
        self.positions = nn.Parameter(movable.to(**factory).expand(position_groups, k - 1, 2).clone())
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight and bias as ``nn.Conv2d`` initialises them; positions are left as they are."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def initial_positions(self) -> torch.Tensor:
        """The (P, K - 1, 2) movable positions of the initial (dilated) grid, where this layer
        equals a conv of its kernel_size (Lemma 1)."""
        movable = _movable_grid(self.kernel_size, self.dilation)
        return movable.to(self.positions).expand_as(self.positions)

    def reset_positions(self) -> None:
        """Back to the initial (dilated) grid."""
        with torch.no_grad():
            self.positions.copy_(self.initial_positions())

    def full_positions(self) -> torch.Tensor:
        """(P, K, 2) positions with the fixed origin synapse inserted at its index."""
        return insert_origin(self.positions, self.origin_index)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._active_conv(input)

    # TorchScript keeps this a Python call: a scripted model with ACUs runs in-process;
    # to deploy without Python, fuse the ACUs into convs first (acuzoo.fuse_acu).
    @torch.jit.ignore
    def _active_conv(self, input: torch.Tensor) -> torch.Tensor:
        positions = insert_origin(self.positions, self.origin_index)
        return active_conv2d(input, self.weight, positions, self.bias, self.stride, self.groups)

    def _name(self) -> str:
        return f"ActiveConv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size})"

    def spread(self) -> float:
        """Largest |displacement| of any synapse, in pixels."""
        return float(self.positions.detach().abs().max()) if self.positions.numel() else 0.0

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, K={self.num_synapses}, P={self.position_groups}"
        )
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        return text + f", spread={self.spread():.2f}"

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, position_groups: int | None = None) -> "ActiveConv2d":
        """The ACU equal to ``conv`` (Lemma 1): same weight, positions on its (dilated) grid."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        reason = conv2d_refusal(conv)
        if reason is not None:
            raise ValueError(f"cannot convert {conv} to an ActiveConv2d: {reason}")
        acu = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.groups,
            position_groups,
            conv.bias is not None,
            conv.dilation,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            acu.weight.copy_(conv.weight.reshape_as(acu.weight))
            if conv.bias is not None:
                acu.bias.copy_(conv.bias)
        acu.train(conv.training)
        return acu

    @torch.no_grad()
    def to_conv2d(self, max_kernel_size: int = MAX_FUSED_KERNEL_SIZE) -> nn.Conv2d:
        """The ordinary conv equal to this ACU (Theorem 2), with the smallest odd kernel that
        holds every synapse. Refuses non-finite positions, and a kernel side beyond
        ``max_kernel_size`` (default ``MAX_FUSED_KERNEL_SIZE``) that a far synapse would need."""
        positions = self.full_positions()
        if not torch.isfinite(positions).all():
            raise ValueError(f"{self._name()} has non-finite (NaN or inf) positions; no conv kernel holds them")
        radius = (kernel_radius(positions[..., 0])[0], kernel_radius(positions[..., 1])[0])
        side = (2 * radius[0] + 1, 2 * radius[1] + 1)
        if max(side) > max_kernel_size:
            raise ValueError(
                f"{self._name()} would fuse to a {side[0]} x {side[1]} kernel (a synapse {self.spread():.4g} px "
                f"away), beyond max_kernel_size={max_kernel_size} (acuzoo.nn.MAX_FUSED_KERNEL_SIZE by default); "
                "pass a larger max_kernel_size to fuse it anyway"
            )
        kernel = extrapolated_kernel(self.weight, positions, radius).to(self.weight.dtype)
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            kernel.shape[-2:],
            self.stride,
            radius,
            groups=self.groups,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        conv.weight.copy_(kernel)
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv
