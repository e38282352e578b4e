"""Every fast path of ``active_conv2d`` computes the reference (eq. 5) in float64.

Cases cover the shared ACU (P = 1), the grouped and depthwise ACUs, and P different from
groups in both directions; positions on the grid, on random integers, inside the grid,
spread to +-1.5 and +-4, and far outside the image; strides 1 and 2; odd and even sizes;
batch 1.
"""

import itertools

import pytest
import torch

from acuzoo.ops import active_conv2d, reference_active_conv2d

# (C_in, C_out, groups, P)
LAYOUTS = {
    "shared": (6, 8, 1, 1),
    "grouped": (8, 8, 4, 4),
    "depthwise": (8, 8, 8, 8),
    "sets_fewer_than_groups": (8, 8, 4, 2),
    "sets_more_than_groups": (8, 16, 4, 8),
    "sets_without_groups": (6, 6, 1, 3),
}
SPREADS = ["grid", "integers", "inside", "1.5", "4", "far"]
FAST_PATHS = ["dense", "columns", "native", "auto"]


def make_positions(p: int, k: int, spread: str, gen: torch.Generator) -> torch.Tensor:
    if spread == "grid":
        grid = torch.tensor([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=torch.float64)
        return grid.expand(p, k, 2).clone()
    if spread == "integers":
        return torch.randint(-3, 4, (p, k, 2), generator=gen).double()
    scale = {"inside": 0.99, "1.5": 1.5, "4": 4.0, "far": 25.0}[spread]
    return (torch.rand(p, k, 2, generator=gen, dtype=torch.float64) * 2 - 1) * scale


def make_case(layout: str, spread: str, n: int, h: int, w: int, seed: int = 0):
    c_in, c_out, groups, p = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, 9, generator=gen, dtype=torch.float64)
    bias = torch.randn(c_out, generator=gen, dtype=torch.float64)
    positions = make_positions(p, 9, spread, gen)
    return x, weight, positions, bias, groups


SIZES = [(1, 7, 9), (2, 8, 6)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", SIZES, ids=["n1_7x9", "n2_8x6"])
def test_forward_matches_reference(layout, spread, stride, size):
    x, weight, positions, bias, groups = make_case(layout, spread, *size)
    expected = reference_active_conv2d(x, weight, positions, bias, stride, groups)
    for path in FAST_PATHS:
        out = active_conv2d(x, weight, positions, bias, stride, groups, path=path)
        assert out.shape == expected.shape
        assert (out - expected).abs().max() < 1e-10, path


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spread", ["grid", "integers", "1.5", "4"])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_match_reference(layout, spread, stride):
    case = make_case(layout, spread, 2, 7, 6, seed=1)
    x, weight, positions, bias, groups = case
    grad_out = torch.randn(2, weight.shape[0], (7 - 1) // stride + 1, (6 - 1) // stride + 1, dtype=torch.float64)

    def grads(path):
        leaves = [t.clone().requires_grad_() for t in (x, weight, positions, bias)]
        out = active_conv2d(*leaves, stride, groups, path=path)
        return torch.autograd.grad(out, leaves, grad_out)

    expected = grads("reference")
    for path in FAST_PATHS:
        for name, got, want in zip(("input", "weight", "positions", "bias"), grads(path), expected):
            assert (got - want).abs().max() < 1e-9, (path, name)


@pytest.mark.parametrize("path", ["reference", "dense", "columns"])
@pytest.mark.parametrize("layout", ["shared", "depthwise", "sets_more_than_groups"])
def test_gradcheck_away_from_integers(path, layout):
    x, weight, positions, bias, groups = make_case(layout, "1.5", 1, 4, 3, seed=2)
    # Keep every coordinate at least 0.05 from an integer so finite differences see one piece.
    frac = positions - positions.floor()
    positions = positions.floor() + frac.clamp(0.05, 0.95)
    leaves = [t.requires_grad_() for t in (x, weight, positions, bias)]
    assert torch.autograd.gradcheck(
        lambda *a: active_conv2d(*a, 2, groups, path=path),
        leaves,
        eps=1e-6,
        atol=1e-7,
        # Random projections keep this quick; full Jacobians are compared with the
        # reference's exactly in test_gradients_match_reference.
        fast_mode=True,
    )


@pytest.mark.parametrize("path", ["reference", "dense", "columns"])
@pytest.mark.parametrize("spread", ["grid", "integers"])
def test_integer_positions_get_the_central_difference(path, spread):
    """At an integer coordinate the output is piecewise linear in the position, so the
    mean of the left and right derivatives equals the symmetric difference quotient."""
    x, weight, positions, _, groups = make_case("sets_fewer_than_groups", spread, 1, 6, 5, seed=3)
    leaves = positions.clone().requires_grad_()
    out = active_conv2d(x, weight, leaves, None, 1, groups, path=path)
    (grad,) = torch.autograd.grad(out.sum(), leaves)
    h = 1e-3  # well inside one linear piece on each side
    numeric = torch.zeros_like(positions)
    for idx in itertools.product(*(range(s) for s in positions.shape)):
        step = torch.zeros_like(positions)
        step[idx] = h
        up = reference_active_conv2d(x, weight, positions + step, None, 1, groups).sum()
        down = reference_active_conv2d(x, weight, positions - step, None, 1, groups).sum()
        numeric[idx] = (up - down) / (2 * h)
    assert (grad - numeric).abs().max() < 1e-9


def test_integer_rule_differs_from_a_one_sided_derivative():
    """The rule is not what autograd through floor() would give (the right derivative)."""
    x, weight, positions, _, groups = make_case("shared", "grid", 1, 6, 5, seed=4)
    leaves = positions.clone().requires_grad_()
    out = active_conv2d(x, weight, leaves, None, 1, groups)
    (grad,) = torch.autograd.grad(out.sum(), leaves)
    h = 1e-3
    step = torch.zeros_like(positions)
    step[0, 0, 0] = h
    f = lambda p: reference_active_conv2d(x, weight, p, None, 1, groups).sum()  # noqa: E731
    right = (f(positions + step) - f(positions)) / h
    left = (f(positions) - f(positions - step)) / h
    assert abs(right - left) > 1e-3  # the kink is real
    assert abs(grad[0, 0, 0] - (left + right) / 2) < 1e-9


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("layout", ["shared", "depthwise", "grouped"])
def test_channels_last_and_non_contiguous_inputs(path, layout):
    x, weight, positions, bias, groups = make_case(layout, "1.5", 2, 9, 8, seed=5)
    expected = reference_active_conv2d(x, weight, positions, bias, 2, groups)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    wide = torch.randn(2, x.shape[1], 9, 16, dtype=torch.float64)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.is_contiguous()
    for variant in (channels_last, strided):
        out = active_conv2d(variant, weight, positions, bias, 2, groups, path=path)
        assert (out - expected).abs().max() < 1e-10


def test_positions_beyond_the_image_read_zeros():
    x, weight, _, bias, groups = make_case("shared", "grid", 1, 5, 5)
    positions = torch.full((1, 9, 2), 50.0, dtype=torch.float64)
    for path in FAST_PATHS:
        out = active_conv2d(x, weight, positions, bias, 1, groups, path=path)
        assert torch.equal(out, bias.view(1, -1, 1, 1).expand_as(out))
