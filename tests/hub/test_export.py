"""Deployment export of the published ACU checkpoints: every ACU fused into an ordinary conv
(Theorem 2), then ONNX (checked with ONNX Runtime) and TorchScript, on real Fashion-MNIST test images."""

from __future__ import annotations

import json

import pytest
import torch

from acuzoo import cli
from acuzoo.hub.commands import export_main
from acuzoo.hub.export import export_onnx, export_torchscript, fused_copy
from acuzoo.hub.pretrained import create_pretrained
from acuzoo.nn import ActiveConv2d

ACU_CHECKPOINTS = ["cifar_resnet29_acu.fmnist", "mobilenetv2_acu_100.fmnist"]


@pytest.fixture(scope="module", params=ACU_CHECKPOINTS)
def trained(request):
    return create_pretrained(request.param).eval()


def test_the_published_acus_have_moved_off_the_grid(trained):
    """Otherwise fusing would be trivial: the positions are learned, not the initial 3x3 grid."""
    layers = [m for m in trained.modules() if isinstance(m, ActiveConv2d)]
    assert layers and any(not torch.equal(m.positions, m.positions.round()) for m in layers)


def test_fusing_leaves_no_acu_and_the_same_predictions(trained, fmnist_test_images):
    images, _ = fmnist_test_images(64)
    fused = fused_copy(trained)
    assert not any(isinstance(m, ActiveConv2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(images), trained(images), rtol=0, atol=1e-4)


def test_onnx_runtime_matches_pytorch_on_real_images(trained, fmnist_test_images):
    ort = pytest.importorskip("onnxruntime")
    images, _ = fmnist_test_images(64)
    data = export_onnx(trained, None, images[:2])
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = trained(images)
    assert (torch.from_numpy(got) - expected).abs().max() < 1e-4


def test_torchscript_matches_pytorch_on_real_images(fmnist_test_images, tmp_path):
    model = create_pretrained("cifar_resnet29_acu.fmnist").eval()
    images, _ = fmnist_test_images(16)
    export_torchscript(model, tmp_path / "model.pt")
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        assert (loaded(images) - model(images)).abs().max() < 1e-4


def test_export_command_writes_onnx_and_torchscript_and_reports_the_check(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    report = export_main([
        "mobilenetv2_acu_100.fmnist", "--onnx", str(tmp_path / "m.onnx"), "--torchscript", str(tmp_path / "m.pt"),
    ])
    assert (tmp_path / "m.onnx").stat().st_size == report["onnx"]["bytes"] > 1_000_000
    assert (tmp_path / "m.pt").is_file()
    assert report["onnx"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert report["torchscript"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert json.loads(capsys.readouterr().out)["model"] == "mobilenetv2_acu_100.fmnist"


# --- the command's options are checked first, and a failed export leaves no file ----------------------------------

SMALL_CHECKPOINT = "cifar_resnet29_acu.fmnist"


def _cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``acuzoo ...`` ending in an error."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return exit_.value.code, capsys.readouterr().err


def test_export_refuses_an_opset_the_exporter_cannot_write_before_writing(tmp_path, capsys):
    code, err = _cli_error(["export", SMALL_CHECKPOINT, "--opset", "99", "--onnx", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and "--opset 99" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["0", "-3"])
def test_export_refuses_an_input_size_below_one(tmp_path, capsys, size):
    code, err = _cli_error(["export", SMALL_CHECKPOINT, "--input-size", size, "--onnx", str(tmp_path / "m.onnx")],
                           capsys)
    assert code == 2 and f"--input-size must be in [1, 4096], got {size}" in err
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_refused_before_any_file_is_written(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    code, err = _cli_error(["export", SMALL_CHECKPOINT, "--onnx", str(tmp_path / "m.onnx"),
                            "--torchscript", str(tmp_path / "notes.txt" / "m.pt")], capsys)
    assert code == 2 and "--torchscript" in err and "notes.txt is a file, not a folder" in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_export_that_fails_after_the_onnx_export_leaves_no_file(tmp_path, monkeypatch):
    def failing_torchscript(model, path):
        raise RuntimeError("torch.jit.script failed")

    monkeypatch.setattr("acuzoo.hub.export.export_torchscript", failing_torchscript)
    with pytest.raises(RuntimeError, match="torch.jit.script failed"):
        export_main([SMALL_CHECKPOINT, "--onnx", str(tmp_path / "m.onnx"), "--torchscript", str(tmp_path / "m.pt")])
    assert list(tmp_path.iterdir()) == []


# --- torch.export (.pt2) and ONNX without the export extra ---------------------------------------------------------


def test_export_command_writes_a_pt2_program_that_matches_pytorch_at_any_batch(tmp_path, capsys):
    report = export_main([SMALL_CHECKPOINT, "--pt2", str(tmp_path / "m.pt2")])
    assert report["pt2"]["max_abs_diff_vs_pytorch"] < 1e-4
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    model = create_pretrained(SMALL_CHECKPOINT).eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, ActiveConv2d) for m in program.modules())


def test_onnx_export_without_the_export_extra_names_the_extra_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the export extra were not installed
    code, err = _cli_error(["export", SMALL_CHECKPOINT, "--onnx", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and "acuzoo[export]" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
