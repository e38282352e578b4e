"""Bad arguments raise errors that name the argument and what was expected."""

import pytest
import torch

from acuzoo.ops import active_conv2d


def _ok():
    return torch.randn(1, 4, 5, 5), torch.randn(4, 2, 9), torch.zeros(2, 9, 2)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda x, w, p: (x[0], w, p), ValueError, r"input must be 4-D \(N, C_in, H, W\)"),
        (lambda x, w, p: (x, w[..., None], p), ValueError, r"weight must be 3-D \(C_out, C_in // groups, K\)"),
        (lambda x, w, p: (x, w, p[..., :1]), ValueError, r"positions must be 3-D \(P, K, 2\)"),
        (lambda x, w, p: (x, w, p[:, :8]), ValueError, r"positions has K=8 .* weight has K=9"),
        (lambda x, w, p: (x, w, torch.zeros(3, 9, 2)), ValueError, r"P=3 .* must divide weight's C_out \(4\)"),
        (lambda x, w, p: (x, w[:, :1], p), ValueError, r"weight must have shape \(C_out, C_in // groups, K\)"),
        (
            lambda x, w, p: (x, w, p.index_fill(0, torch.tensor([0]), float("nan"))),
            ValueError,
            r"positions must be finite",
        ),
        (lambda x, w, p: (x, w.double(), p), TypeError, r"weight and bias must have input's dtype"),
        (lambda x, w, p: (x.long(), w, p), TypeError, r"input must be a floating-point tensor"),
        (lambda x, w, p: (x, w, p.to("meta")), ValueError, r"all tensors must be on one device"),
    ],
)
def test_bad_tensors_are_named(change, error, message):
    x, w, p = change(*_ok())
    with pytest.raises(error, match=message):
        active_conv2d(x, w, p, None, 1, 2)


def test_groups_must_divide_input_channels():
    x, w, p = _ok()
    with pytest.raises(ValueError, match=r"input channels \(4\) must be divisible by groups \(3\)"):
        active_conv2d(x, w, p, None, 1, 3)


def test_bias_shape_is_checked():
    x, w, p = _ok()
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        active_conv2d(x, w, p, torch.zeros(3), 1, 2)


@pytest.mark.parametrize("stride", [0, (1, 0), (1, 2, 3), 1.5])
def test_stride_must_be_positive_ints(stride):
    x, w, p = _ok()
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        active_conv2d(x, w, p, None, stride, 2)


def test_unknown_path_is_refused():
    x, w, p = _ok()
    with pytest.raises(ValueError, match="path must be .auto., .native. or a name from acuzoo.ops.KERNELS"):
        active_conv2d(x, w, p, None, 1, 2, path="fastest")


@pytest.mark.parametrize(
    "values",
    [[float("inf")], [float("-inf")], [float("inf"), float("-inf")], [float("nan"), float("inf")]],
    ids=["inf", "-inf", "inf_and_-inf", "nan_and_inf"],
)
def test_any_non_finite_position_is_refused(values):
    # The check sums the positions once: +inf and -inf together must still be caught.
    x, w, p = _ok()
    p = p.clone()
    for i, v in enumerate(values):
        p[1, i, 0] = v
    with pytest.raises(ValueError, match="positions must be finite"):
        active_conv2d(x, w, p, None, 1, 2)
