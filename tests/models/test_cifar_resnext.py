"""The CIFAR ResNeXt family (Table 9): ResNeXt-29 8x64d and the depthwise ACU-29 / ACU-47,
registered in timm, fusing and exporting like the ResNet-29 family.

These models are large for a CPU test (16-34M parameters), so what depends only on the
structure runs on the meta device and forward runs once per model at batch 1. The timm API is
one class with the ResNet-29 family (``CifarResNet``) and is tested there; here only what the
ResNeXt widths change (features, head width). Fusion runs on both ACU models; TorchScript and
ONNX export on ACU-29 (ACU-47 only stacks more of the same blocks).
"""

import copy
import functools
import io

import onnxruntime
import pytest
import timm
import torch
from torch import nn

import acuzoo
import acuzoo.nn.active_conv as active_conv_module
from acuzoo.models.cifar_resnet import PreActBottleneck
from acuzoo.nn import ActiveConv2d
from acuzoo.ops import active_conv2d

NAMES = ["cifar_acu29_x1d", "cifar_acu47_x1d", "cifar_resnext29_8x64d"]
ACU_NAMES = ["cifar_acu29_x1d", "cifar_acu47_x1d"]


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    # 32x32 inputs at batch 1-2: one thread is faster than two, and does not stall in OpenMP
    # barriers when the machine is busy (measured 30-100x slower with two on a loaded box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def test_timm_lists_the_three_table9_models_with_cifar10_tags():
    assert sorted(timm.list_models(["cifar_resnext*", "cifar_acu*"])) == NAMES
    assert timm.list_models(NAMES, include_tags=True) == [f"{n}.cifar10" for n in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_is_the_cifar10_cfg(name):
    cfg = timm.create_model(name, device="meta").pretrained_cfg
    assert cfg["tag"] == "cifar10" and cfg["url"] == "" and cfg["license"] == "mit"
    assert (cfg["num_classes"], cfg["input_size"], cfg["pool_size"]) == (10, (3, 32, 32), (8, 8))
    assert (cfg["first_conv"], cfg["classifier"]) == ("stem", "head.fc")


@pytest.mark.parametrize("name", NAMES)
def test_blocks_are_the_papers_pre_activation_bottlenecks(name):
    """Appendix B: pre-activation blocks; a plain stem conv, a final BN-ReLU."""
    model = timm.create_model(name, device="meta")
    assert all(isinstance(block, PreActBottleneck) for stage in model.stages for block in stage)
    assert isinstance(model.stem, nn.Conv2d) and isinstance(model.norm, nn.BatchNorm2d)


def test_projection_shortcut_is_a_strided_1x1_conv_only_where_the_shape_changes():
    model = timm.create_model("cifar_resnext29_8x64d", device="meta")
    shortcuts = [[block.downsample for block in stage] for stage in model.stages]
    assert [[s is not None for s in stage] for stage in shortcuts] == [[True, False, False]] * 3
    assert [(s[0].kernel_size, s[0].stride) for s in shortcuts] == [((1, 1), (1, 1))] + [((1, 1), (2, 2))] * 2


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_ten_finite_logits(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        logits = model(image())
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_features_only_returns_stem_and_stage_features():
    model = timm.create_model("cifar_acu29_x1d", features_only=True).eval()
    assert model.feature_info.channels() == [64, 256, 512, 1024]
    assert model.feature_info.reduction() == [1, 1, 2, 4]
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in model(image())]
    assert shapes == [(1, 64, 32, 32), (1, 256, 32, 32), (1, 512, 16, 16), (1, 1024, 8, 8)]


def test_num_classes_zero_and_in_chans_one_work():
    model = timm.create_model("cifar_resnext29_8x64d", num_classes=0, in_chans=1, device="meta")
    out = model(torch.empty(1, 1, 32, 32, device="meta"))
    assert out.shape == (1, model.num_features) == (1, 1024)


def test_reset_classifier_sets_the_number_of_outputs():
    model = timm.create_model("cifar_resnext29_8x64d", device="meta")
    model.reset_classifier(100)
    assert model.get_classifier().out_features == 100
    assert model.get_classifier().weight.device.type == "meta"


@pytest.fixture(scope="module", autouse=True)
def release_perturbed_models():
    yield
    perturbed.cache_clear()  # the cached models are large; free them with the module


@functools.cache
def perturbed(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(ACU model with positions moved off the grid, its fused copy, input), built once."""
    torch.manual_seed(1)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for p in acuzoo.position_parameters(model):
            p.add_(torch.empty_like(p).uniform_(-1.0, 1.0))
    fused = acuzoo.fuse_acu(copy.deepcopy(model)).eval()
    return model, fused, image()


@pytest.mark.parametrize("name", ACU_NAMES)
def test_fused_model_gives_the_acu_models_logits(name):
    model, fused, x = perturbed(name)
    # Depthwise ACUs over 512-2048 channels make the bilinear-columns path slow on CPU; the
    # ACU model runs the dispatcher's own choice, the ResNet-29 tests cover columns vs fused.
    with torch.no_grad():
        expected = model(x)
        actual = fused(x)
    assert not any(isinstance(m, ActiveConv2d) for m in fused.modules())
    assert max(b.conv2.kernel_size[0] for s in fused.stages for b in s) > 3
    assert relative_error(actual, expected) < 1e-4


def test_fused_acu29_matches_its_columns_path_on_one_block(monkeypatch):
    """The first block of ACU-29 on its own, with the ACU read by bilinear columns."""
    model, fused, _ = perturbed("cifar_acu29_x1d")
    x = torch.randn(1, 64, 8, 8, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(active_conv_module, "active_conv2d", functools.partial(active_conv2d, path="columns"))
    with torch.no_grad():
        assert relative_error(fused.stages[0][0](x), model.stages[0][0](x)) < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_fused_acu29_exports_to_torchscript():
    _, fused, x = perturbed("cifar_acu29_x1d")
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(fused), buffer)
    buffer.seek(0)
    with torch.no_grad():
        assert relative_error(torch.jit.load(buffer)(x), fused(x)) < 1e-6


def test_fused_acu29_exports_to_onnx():
    _, fused, x = perturbed("cifar_acu29_x1d")
    buffer = io.BytesIO()
    torch.onnx.export(fused, (x,), buffer, dynamo=False, input_names=["images"], output_names=["logits"])
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert relative_error(torch.from_numpy(logits), fused(x)) < 1e-4
