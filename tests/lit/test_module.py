"""ImageClassifier: builds timm models by name, primitive hyperparameters, the paper's optimizer
groups and schedules, ACU-Fixed starts."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from acuzoo.lit import ImageClassifier
from acuzoo.lit.optim import LinearDecay, build_schedule, parameter_groups
from acuzoo.nn import ActiveConv2d, position_parameters

PRIMITIVES = (int, float, str, bool, type(None))


def is_primitive(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(is_primitive(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_primitive(v) for k, v in value.items())
    return isinstance(value, PRIMITIVES)


def first_weight(module: ImageClassifier) -> torch.Tensor:
    return next(p for n, p in module.model.named_parameters() if n.endswith("weight"))


def test_builds_an_acuzoo_model_by_its_timm_name():
    module = ImageClassifier("cifar_resnet29_acu", num_classes=10)
    assert any(isinstance(m, ActiveConv2d) for m in module.modules())
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_converts_a_timm_model_to_depthwise_acus_when_asked():
    module = ImageClassifier("mobilenetv2_035", num_classes=4, in_chans=1, convert_to_acu=True)
    acus = [m for m in module.modules() if isinstance(m, ActiveConv2d)]
    assert acus and all(m.groups == m.in_channels == m.position_groups for m in acus)
    assert module(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        ImageClassifier("no_such_net")


def test_hyperparameters_are_primitive_values():
    module = ImageClassifier("cifar_resnet29_acu", milestones=[32000, 48000], model_kwargs={"drop_rate": 0.1})
    assert list(module.hparams["milestones"]) == [32000, 48000]
    assert all(is_primitive(v) for v in module.hparams.values())


def test_data_config_carries_the_requested_channels_and_input_size():
    module = ImageClassifier("mobilenetv2_035", in_chans=1, input_size=32)
    assert module.data_config["input_size"] == (1, 32, 32)


def test_parameter_groups_leave_positions_to_their_callback_and_norm_bias_undecayed_only_when_asked():
    module = ImageClassifier("cifar_resnet29_acu")
    model = module.model
    positions = {id(p) for p in position_parameters(model)}
    for no_norm_bias in (False, True):
        groups = {g["name"]: g for g in parameter_groups(model, 5e-4, no_norm_bias)}
        grouped = {id(p) for g in groups.values() for p in g["params"]}
        assert not grouped & positions
        assert grouped | positions == {id(p) for p in model.parameters()}
        decayed_1d = [p for p in groups["decay"]["params"] if p.ndim <= 1]
        assert (not decayed_1d) == no_norm_bias
        assert ("no_decay" in groups) == no_norm_bias


def test_optimizer_is_nesterov_sgd_with_the_recipe_values():
    module = ImageClassifier("cifar_resnet29_acu", lr=0.1, weight_decay=5e-4, milestones=[32000, 48000])
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["lr"] == 0.1 for g in optimizer.param_groups)
    assert config["lr_scheduler"]["interval"] == "step"
    assert dict(scheduler["scheduler"].milestones) == {32000: 1, 48000: 1}


def test_multistep_schedule_divides_by_ten_at_each_milestone():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = build_schedule(optimizer, "multistep", [3, 5], 0.1)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])


def test_linear_decay_goes_from_the_base_lr_to_zero_over_its_length():
    decay = LinearDecay(60)
    assert decay(0) == 1.0 and decay(30) == 0.5 and decay(60) == 0.0 and decay(70) == 0.0


def test_acu_fixed_takes_positions_from_a_checkpoint_reinitialises_weights_and_freezes(tmp_path):
    trained = ImageClassifier("cifar_resnet29_acu")
    with torch.no_grad():
        for p in position_parameters(trained):
            p.add_(0.3)
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)

    torch.manual_seed(123)
    fixed = ImageClassifier("cifar_resnet29_acu", init_positions_from=str(path), freeze_positions=True)
    for a, b in zip(position_parameters(trained), position_parameters(fixed)):
        assert torch.equal(a, b) and not b.requires_grad
    assert not torch.equal(first_weight(trained), first_weight(fixed))
    optimized = {id(p) for g in fixed.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in position_parameters(fixed)}


def test_positions_from_a_checkpoint_of_another_model_are_refused(tmp_path):
    path = tmp_path / "conv.ckpt"
    torch.save({"state_dict": ImageClassifier("cifar_resnet29_conv3").state_dict()}, path)
    with pytest.raises(KeyError, match="no positions for ACU layer"):
        ImageClassifier("cifar_resnet29_acu", init_positions_from=str(path))


def test_fine_tuning_start_copies_matching_weights_and_keeps_a_new_head(tmp_path):
    source = ImageClassifier("cifar_resnet29_acu", num_classes=10)
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = ImageClassifier("cifar_resnet29_acu", num_classes=3, init_weights_from=str(path))
    assert torch.equal(first_weight(source), first_weight(target))
    assert target(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_accuracy_is_plain_accuracy_on_unbalanced_labels():
    module = ImageClassifier(model_name="resnet18", num_classes=3)
    metric = module.acc1["test_"]
    logits = torch.tensor([[9.0, 0, 0]] * 4)
    labels = torch.tensor([0, 0, 0, 1])  # right 3 of 4; the per-class mean would be (1 + 0) / 2
    metric.update(logits, labels)
    assert metric.compute() == 0.75


def test_timm_weights_that_cannot_be_fetched_give_a_clear_offline_error(monkeypatch):
    from acuzoo.lit import module as module_file

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(module_file.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"'resnet18'.*does not download at run time.*init_weights_from"):
        module_file.build_model("resnet18", 10, 3, pretrained=True)


def test_acuzoo_checkpoint_errors_pass_through_unchanged(monkeypatch):
    from acuzoo.lit import module as module_file

    def refused(*args, **kwargs):
        raise ValueError("sha256 mismatch in cifar_resnet29_acu.fmnist.safetensors")

    monkeypatch.setattr(module_file.timm, "create_model", refused)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        module_file.build_model("cifar_resnet29_acu.fmnist", 10, 1, pretrained=True)


def test_channels_last_keeps_weights_and_batches_channels_last_with_the_same_outputs():
    torch.manual_seed(0)
    plain = ImageClassifier("mobilenetv2_acu_080", num_classes=4, in_chans=1)
    fast = ImageClassifier("mobilenetv2_acu_080", num_classes=4, in_chans=1, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    weights = [p for p in fast.model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    seen = []
    fast.model.conv_stem.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    images = torch.randn(3, 1, 32, 32)
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    # Gradients match the NCHW module's (eval mode: batch norm over 3 images of 1x1 maps, as
    # in training mode at this size, would amplify rounding differences a thousandfold).
    batch = (images, torch.tensor([0, 1, 3]))
    for module in (plain, fast):
        module.zero_grad()
        module.criterion(module(batch[0]), batch[1]).backward()
    for (name, a), b in zip(plain.model.named_parameters(), fast.model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


# --- Bad model arguments and mismatched data are refused before training (issue 16, point 5) ---


@pytest.mark.parametrize("input_size", [0, -32, 2.5, True])
def test_input_size_must_be_a_positive_int_never_replaced_by_the_default(input_size):
    with pytest.raises(ValueError, match=rf"input_size must be a positive int.*got {input_size!r}"):
        ImageClassifier("mobilenetv2_035", input_size=input_size)


def test_num_classes_that_does_not_match_the_data_is_refused_at_setup_with_both_numbers(tmp_path):
    from acuzoo.lit import SyntheticData

    module = ImageClassifier("mobilenetv2_035", num_classes=2, in_chans=1, input_size=32)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    data = SyntheticData(num_samples=4, num_classes=10, batch_size=2)
    with pytest.raises(ValueError, match=r"num_classes=2 does not match the data: SyntheticData has 10 classes"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0


def test_data_config_carries_the_heads_class_count_for_data_modules():
    assert ImageClassifier("mobilenetv2_035", num_classes=3).data_config["num_classes"] == 3


def test_compile_trains_the_model_compiled_in_place_with_the_eager_parameter_names(tmp_path):
    from acuzoo.lit import PositionLearningRate, SyntheticData

    torch.manual_seed(0)
    kwargs = {"num_classes": 4, "in_chans": 1, "input_size": 16, "convert_to_acu": True}
    module = ImageClassifier("mobilenetv2_035", compile=True, **kwargs)
    eager = ImageClassifier("mobilenetv2_035", **kwargs)
    assert list(module.state_dict()) == list(eager.state_dict())
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[PositionLearningRate()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=SyntheticData(num_samples=8, num_classes=4, batch_size=4))
    assert trainer.global_step == 2
    assert module.model._compiled_call_impl is not None
    positions = [n for n, _ in module.model.named_parameters() if n.endswith("positions")]
    assert positions and all(not torch.equal(before[n], module.model.get_parameter(n)) for n in positions)
