"""Mixed precision: the normalized position gradient comes after the AMP scaler's unscale_.

Lightning turns precision="16-mixed" on the CPU into bf16 (no scaler); passing the plugin
keeps fp16 autocast with a real GradScaler (initial scale 2**16), so this runs on CPU CI."""

from __future__ import annotations

import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from acuzoo.lit import PositionLearningRate, PositionWarmup


def fp16_amp() -> dict:
    return {"accelerator": "cpu", "plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}


def test_position_grads_are_normalized_after_unscaling(tiny_module, loader, trainer_factory, recorder):
    # Normalized before unscale_, the step would see norms of 1 / scale (2**16 at first).
    trainer = trainer_factory(
        max_steps=4, callbacks=[PositionLearningRate(), recorder], **fp16_amp()
    )
    trainer.fit(tiny_module(momentum=0.0), loader())
    assert trainer.precision_plugin.scaler.get_scale() > 1  # the gradients really were scaled
    assert recorder.grad_norms, "no optimizer step ran"
    for norms in recorder.grad_norms:
        for n in norms:
            assert torch.allclose(n, torch.ones_like(n), atol=1e-3)


def test_warmup_freezes_positions_under_amp(tiny_module, loader, trainer_factory, recorder):
    module = tiny_module()
    initial = [p.detach().clone() for p in module.positions()]
    trainer = trainer_factory(
        max_steps=3, callbacks=[PositionWarmup(steps=2), recorder], **fp16_amp()
    )
    trainer.fit(module, loader())
    for after in recorder.positions_after_batch[:2]:
        assert all(torch.equal(a.cpu(), b) for a, b in zip(after, initial))
    assert not all(torch.equal(a.cpu(), b) for a, b in zip(recorder.positions_after_batch[2], initial))
