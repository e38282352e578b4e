"""Every row of the paper's Tables 6, 7 and 8: parameters within 1.5% (1000 classes) and
MAdds within 3% at 224 x 224 (acuzoo.profile's convention).

Input size. Every ImageNet model is measured at 224, the paper's training and test crop
(section 5.1). For Xception too: Chollet's 299 gives 8.36G, 224 gives 4.55G, Table 7's 4.6G.

Rows that do not match are strict xfails, with the reason found:

* MobileNetV2 x0.8 (both rows) and x1.2 (MAdds): the paper's networks are not the original's
  width rounding (multiples of 8, 1280 head kept below width 1), which acuzoo follows so timm's
  and torchvision's weights convert. Our x0.8 has 2.79M / 222M against 2.5M / 201M, our x1.2
  465M against 437M. The ACU overheads of Table 8 tell what the paper built: 24 MAdds per
  depthwise output element (see acuzoo.profile) gives 43.3M, 55.2M, 65.4M, 76.3M for channel
  counts truncated to int(c * width), against the paper's 43M, 55M, 65M, 77M; the original
  rounding gives 47.3M, 55.2M, 71.3M, 78.9M. With truncated widths and the head scaled at x0.8
  too (1024 channels) x0.8 has 2.46M, i.e. the paper's 2.5M. We keep the original rounding.
* MobileNetV2 x1.0 MAdds: 300.8M against 314M (-4.2%) for both rows. x1.0 is the same network
  under every rounding, and 300M is the original paper's own figure for it; we could not find a
  counting convention that adds the missing 13M at x1.0 and only 4M at x1.4, so we leave it.
* MobileNetV2 x1.4 ACU and all other rows match.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import timm

import acuzoo  # noqa: F401  (registers the zoo)
from acuzoo.profile import count_madds, count_params

PARAMS_TOL = 0.015
MADDS_TOL = 0.03
INPUT = (3, 224, 224)

WIDTHS_ROUNDING = "the paper's x0.8/x1.2 networks round widths differently (module docstring)"
X10_MADDS = "x1.0 counts 300.8M, the original MobileNetV2's own 300M; the paper's 314M is unexplained"


@dataclass(frozen=True)
class Row:
    table: int
    model: str
    params_m: float
    madds_m: float
    params_mismatch: str = ""
    madds_mismatch: str = ""


ROWS = [
    Row(6, "inception_bn_conv", 7.0, 1580),
    Row(6, "inception_bn_acu", 7.1, 1470),
    Row(7, "xception_conv", 22.9, 4600),
    Row(7, "xception_acu", 23.0, 4700),
    Row(8, "mobilenetv2_conv_080", 2.5, 201, WIDTHS_ROUNDING, WIDTHS_ROUNDING),
    Row(8, "mobilenetv2_conv_100", 3.5, 314, madds_mismatch=X10_MADDS),
    Row(8, "mobilenetv2_conv_120", 4.7, 437, madds_mismatch=WIDTHS_ROUNDING),
    Row(8, "mobilenetv2_conv_140", 6.1, 586),
    Row(8, "mobilenetv2_acu_080", 2.5, 244, WIDTHS_ROUNDING, WIDTHS_ROUNDING),
    Row(8, "mobilenetv2_acu_100", 3.6, 369, madds_mismatch=X10_MADDS),
    Row(8, "mobilenetv2_acu_120", 4.8, 502, madds_mismatch=WIDTHS_ROUNDING),
    Row(8, "mobilenetv2_acu_140", 6.2, 663),
]


def _case(row: Row, mismatch: str) -> pytest.param:
    marks = [pytest.mark.xfail(strict=True, reason=mismatch)] if mismatch else []
    return pytest.param(row, id=f"table{row.table}-{row.model}", marks=marks)


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[int, int]]:
    counts = {}
    for row in ROWS:
        model = timm.create_model(row.model, num_classes=1000)
        counts[row.model] = (count_params(model), count_madds(model, INPUT))
    return counts


@pytest.mark.parametrize("row", [_case(r, r.params_mismatch) for r in ROWS])
def test_parameter_count_matches_the_paper(row: Row, measured: dict[str, tuple[int, int]]) -> None:
    params = measured[row.model][0] / 1e6
    assert abs(params / row.params_m - 1) <= PARAMS_TOL, f"{params:.3f}M vs {row.params_m}M"


@pytest.mark.parametrize("row", [_case(r, r.madds_mismatch) for r in ROWS])
def test_madds_match_the_paper(row: Row, measured: dict[str, tuple[int, int]]) -> None:
    madds = measured[row.model][1] / 1e6
    assert abs(madds / row.madds_m - 1) <= MADDS_TOL, f"{madds:.1f}M vs {row.madds_m}M"


@pytest.mark.parametrize(
    ("width", "paper_overhead_m"),
    [
        pytest.param("080", 43, marks=pytest.mark.xfail(strict=True, reason=WIDTHS_ROUNDING)),
        ("100", 55),
        pytest.param("120", 65, marks=pytest.mark.xfail(strict=True, reason=WIDTHS_ROUNDING)),
        ("140", 77),
    ],
)
def test_acu_overhead_over_its_baseline_matches_table8(
    width: str, paper_overhead_m: float, measured: dict[str, tuple[int, int]]
) -> None:
    """The derived interpolation convention reproduces Table 8's ACU-minus-base MAdds."""
    overhead = (measured[f"mobilenetv2_acu_{width}"][1] - measured[f"mobilenetv2_conv_{width}"][1]) / 1e6
    assert abs(overhead / paper_overhead_m - 1) <= MADDS_TOL, f"{overhead:.1f}M vs {paper_overhead_m}M"


def test_table_rows_cover_every_imagenet_model() -> None:
    imagenet = [n for n in acuzoo.models.list_models() if not n.startswith("cifar_")]
    assert sorted(r.model for r in ROWS) == imagenet
