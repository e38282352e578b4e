"""PositionPlot: PNGs every N epochs and at the end, beside the logs, and in TensorBoard."""

from __future__ import annotations

import pytest
from matplotlib.collections import PathCollection, QuadMesh
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from acuzoo.lit import PositionPlot, plot_positions
from acuzoo.nn import ActiveConv2d


def test_pngs_are_written_every_n_epochs_and_at_the_end(tiny_module, loader, trainer_factory, tmp_path):
    plot = PositionPlot(every_n_epochs=2, dirpath=str(tmp_path / "plots"))
    trainer_factory(max_epochs=3, callbacks=[plot]).fit(tiny_module(), loader(batches=1))
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["epoch001.png", "final.png"]
    assert (tmp_path / "plots" / "final.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pngs_go_beside_the_logs_and_into_tensorboard(tiny_module, loader, trainer_factory, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = trainer_factory(max_epochs=1, logger=logger, callbacks=[PositionPlot()])
    trainer.fit(tiny_module(), loader(batches=1))
    assert logger.log_dir and (tmp_path / "run" / "version_0" / "positions" / "final.png").is_file()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "acu_positions" in events.Tags()["images"]


def test_shared_and_grouped_layers_are_drawn_as_position_sets_over_the_grid():
    model = nn.Sequential(ActiveConv2d(4, 4, 3, position_groups=1), ActiveConv2d(4, 8, 3, groups=2))
    fig = plot_positions(model, sets=5)
    # The faint initial grid, then one scatter per drawn set: P=1 gives one, P=2 two.
    for ax, sets_drawn in zip(fig.axes, (1, 2)):
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(scatters) == 1 + sets_drawn


def test_depthwise_layers_are_drawn_as_a_2d_histogram():
    fig = plot_positions(nn.Sequential(ActiveConv2d(32, 32, 3, groups=32)))
    assert any(isinstance(c, QuadMesh) for c in fig.axes[0].collections)


def test_plotting_a_model_without_acus_is_refused():
    with pytest.raises(ValueError, match="no ACU layer"):
        plot_positions(nn.Conv2d(1, 1, 3))
