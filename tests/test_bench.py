"""bench/ops.py and bench/ab.py: how kernels are named on the command line, which format a cell
keeps, and how the A/B reads each side's rows (no timing here)."""

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


ops = load("ops")
ab = load("ab")
KERNELS = {"cpu.merged_conv": None, "cpu.depthwise_blocks": None, "dense": None}


def recording_force(calls: list):
    def force(name=None, **directions):
        calls.append((name, directions))
        return contextlib.nullcontext()

    return force


def test_auto_runs_without_forcing() -> None:
    calls: list = []
    with ops.kernel_context("auto", recording_force(calls))():
        pass
    assert calls == []


def test_a_kernel_name_is_forced_by_name() -> None:
    calls: list = []
    with ops.kernel_context("cpu.depthwise_blocks", recording_force(calls))():
        pass
    assert calls == [("cpu.depthwise_blocks", {})]


def test_a_pair_forces_forward_and_backward_apart() -> None:
    calls: list = []
    with ops.kernel_context("cpu.merged_conv+cpu.depthwise_blocks", recording_force(calls))():
        pass
    assert calls == [(None, {"forward": "cpu.merged_conv", "backward": "cpu.depthwise_blocks"})]


def test_kernel_specs_name_known_kernels_or_a_pair_of_them() -> None:
    ops.check_kernel_specs(["auto", "dense", "cpu.merged_conv+cpu.depthwise_blocks"], KERNELS)
    for bad in (["cpu.nonesuch"], ["dense+cpu.nonesuch"], ["dense+dense+dense"]):
        with pytest.raises(SystemExit, match="--kernels"):
            ops.check_kernel_specs(bad, KERNELS)


def test_a_package_without_the_kernel_plan_serves_auto_only() -> None:
    ops.check_kernel_specs(["auto"], None)
    with pytest.raises(SystemExit, match="only auto"):
        ops.check_kernel_specs(["dense"], None)


def test_a_cell_keeps_the_format_of_its_best_forward_backward() -> None:
    fmt, fwd, fb = ops.kept_format({"nchw": [1.0, 9.0], "channels_last": [2.0, 5.0]})
    assert (fmt, fb) == ("channels_last", 5.0)
    assert fwd == 1.0  # the forward keeps its own best, as the table always did


def test_a_refused_kernel_keeps_no_format() -> None:
    assert ops.kept_format({}) is None


def test_every_shape_names_a_full_geometry() -> None:
    for name, (c_in, c_out, h, w, stride, groups, sets, batch) in ops.SHAPES.items():
        assert c_in % groups == 0 and c_out % sets == 0, name
        assert min(h, w, stride, batch) >= 1, name


def test_ab_reads_the_rows_of_a_printed_table() -> None:
    # The layout of bench/ops.py before the kernel plan (--paths auto, one decimal; narrower here).
    stdout = """torch 2.14.1+cu130, 2 threads, float32, allocator: glibc malloc
shape            spread  conv fwd  conv f+b  auto fwd  x conv  auto f+b  x conv  deform f+b deform/acu  auto picks
dw C960 7          init       0.4       1.4       0.5    1.42       2.3    1.66           -          -      native
dw C960 7         +-1.5       0.4       1.4       0.7    1.77       2.7    1.96        1804        732      native
"""
    cells = ab.read_table(stdout, "dw C960 7")
    assert set(cells) == {("dw C960 7", "init"), ("dw C960 7", "+-1.5")}
    init = cells["dw C960 7", "init"]
    assert (init.fwd, init.fb, init.conv_fb, init.picks) == (0.5, 2.3, 1.4, "native")


def test_ab_reads_the_asked_kernel_from_a_csv_and_skips_refused_cells() -> None:
    text = "\n".join(
        [
            ",".join(ops.CSV_FIELDS),
            "dw C960 7,init,auto,channels_last,0.5,2.25,0.4,1.4,a/b,a/b",
            "dw C960 7,init,cpu.depthwise_planes,nchw,0.6,2.5,0.4,1.4,a/b,p/p",
            "dw C960 7,+-3,auto,,,,0.4,1.4,a/b,",
        ]
    )
    cells = ab.read_csv(text, "auto")
    assert list(cells) == [("dw C960 7", "init")]
    assert cells["dw C960 7", "init"].fb == 2.25


def test_ab_keeps_the_best_of_repeated_runs() -> None:
    first, second = ab.Cell(1.0, 5.0, 2.0, "x"), ab.Cell(1.5, 4.0, 2.5, "x")
    best = first.best_with(second)
    assert (best.fwd, best.fb, best.conv_fb) == (1.0, 4.0, 2.0)


study = load("acu_vs_conv")


def test_the_study_interval_is_welchs_with_students_quantile() -> None:
    d, low, high = study.difference([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # df 4, se sqrt(2/3)
    assert d == 1.0
    assert (high - low) / 2 == pytest.approx(2.776 * (2 / 3) ** 0.5, rel=1e-6)
    assert study.difference([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_students_quantile_falls_with_the_degrees_of_freedom() -> None:
    values = [study.t975(df) for df in (1, 1.5, 2, 3.3, 4, 11, 25, 500)]
    assert values == sorted(values, reverse=True) and values[0] == 12.706 and values[-1] == 1.96
    assert study.t975(4) == 2.776


def test_the_studys_verdict_follows_the_interval_not_the_mean() -> None:
    assert study.verdict(0.1, 0.9).startswith("the ACU is ahead")
    assert study.verdict(-0.9, -0.1).startswith("the conv is ahead")
    for low, high in ((-0.1, 0.9), (-0.9, 0.1), (0.0, 0.5)):
        assert study.verdict(low, high).startswith("no difference")


def test_the_study_never_pools_runs_of_different_recipes() -> None:
    def row(arm: str, acc: float, recipe: str) -> dict[str, str]:
        return {"model": f"mobilenetv2_{arm}_100", "arm": arm, "test_acc1": str(acc), "recipe": recipe}

    rows = [row("conv", 91.0, "a"), row("acu", 91.5, "a"), row("conv", 93.0, "b"), row("conv", 93.2, "b")]
    assert study.grouped(rows) == {
        ("mobilenetv2", "a"): {"conv": [91.0], "acu": [91.5]},
        ("mobilenetv2", "b"): {"conv": [93.0, 93.2]},
    }


def test_the_studys_recipe_label_is_shared_by_the_arms_and_names_the_augmentation() -> None:
    for arms in study.PAIRS.values():
        labels = {study.recipe_label(config) for _, config in arms.values()}
        assert len(labels) == 1
        assert "flip" in labels.pop()


def test_the_studys_own_outputs_do_not_mark_its_commit_dirty(tmp_path, monkeypatch) -> None:
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench").mkdir()
    csv_file, code = tmp_path / "bench" / "acu_vs_conv.csv", tmp_path / "train.py"
    csv_file.write_text("model\n")
    code.write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.setattr(study, "ROOT", tmp_path)
    monkeypatch.setattr(study, "CSV", csv_file)
    monkeypatch.setattr(study, "PNG", tmp_path / "bench" / "acu_vs_conv.png")
    csv_file.write_text("model\nrow\n")
    assert not study.commit().endswith("+dirty")
    code.write_text("x = 2\n")
    assert study.commit().endswith("+dirty")
