"""Mixed precision: the normalized position gradient comes after the AMP scaler's unscale_.

fp16 autocast with a GradScaler needs CUDA; CPU CI skips this test."""

from __future__ import annotations

import pytest
import torch

from acuzoo.lit import PositionLearningRate, PositionWarmup

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 AMP with a GradScaler needs CUDA")


def test_position_grads_are_normalized_after_unscaling(tiny_module, loader, trainer_factory, recorder):
    # Normalized before unscale_, the step would see norms of 1 / scale (2**16 at first).
    trainer = trainer_factory(
        accelerator="gpu", precision="16-mixed", max_steps=4, callbacks=[PositionLearningRate(), recorder]
    )
    trainer.fit(tiny_module(momentum=0.0), loader())
    assert recorder.grad_norms, "no optimizer step ran"
    for norms in recorder.grad_norms:
        for n in norms:
            assert torch.allclose(n, torch.ones_like(n), atol=1e-3)


def test_warmup_freezes_positions_under_amp(tiny_module, loader, trainer_factory, recorder):
    module = tiny_module()
    initial = [p.detach().clone() for p in module.positions()]
    trainer = trainer_factory(
        accelerator="gpu", precision="16-mixed", max_steps=3, callbacks=[PositionWarmup(steps=2), recorder]
    )
    trainer.fit(module, loader())
    for after in recorder.positions_after_batch[:2]:
        assert all(torch.equal(a.cpu(), b) for a, b in zip(after, initial))
    assert not all(torch.equal(a.cpu(), b) for a, b in zip(recorder.positions_after_batch[2], initial))
