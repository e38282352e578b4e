"""``PositionPlot``: pictures of the learned synapse positions (paper Figs. 4, 8, 9 and 10)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from ..nn import ActiveConv2d, grid_positions

# A 2-D histogram reads better than scattered sets once a layer has this many sets (depthwise).
_HISTOGRAM_MIN_SETS = 16


def acu_layers(module: nn.Module) -> list[tuple[str, ActiveConv2d]]:
    """(name, layer) of every ACU in ``module``; layers sharing one positions tensor appear once."""
    seen: set[int] = set()
    out = []
    for name, m in module.named_modules():
        if isinstance(m, ActiveConv2d) and id(m.positions) not in seen:
            seen.add(id(m.positions))
            out.append((name, m))
    return out


def _draw_sets(ax, layer: ActiveConv2d, sets: int, seed: int) -> None:
    import matplotlib

    grid = grid_positions(layer.kernel_size, layer.dilation)
    ax.scatter(grid[:, 1], grid[:, 0], s=60, facecolors="none", edgecolors="0.8", linewidths=1, zorder=1)
    full = layer.full_positions().detach().float().cpu()
    p = full.shape[0]
    # The same sets every time, so successive pictures of a layer compare.
    chosen = torch.randperm(p, generator=torch.Generator().manual_seed(seed))[: min(sets, p)]
    colors = matplotlib.colormaps["tab10"]
    for i, s in enumerate(sorted(chosen.tolist())):
        ax.scatter(full[s, :, 1], full[s, :, 0], s=14, color=colors(i % 10), zorder=2, label=f"set {s}")


def _draw_histogram(ax, layer: ActiveConv2d) -> None:
    from matplotlib.colors import LogNorm

    full = layer.full_positions().detach().float().cpu().reshape(-1, 2).numpy()
    # Bins of 1/8 pixel centred on the grid, so the initial synapses sit mid-bin.
    reach = math.ceil(max(1.0, float(np.abs(full).max()))) + 0.5
    edges = np.arange(-reach, reach + 1e-9, 0.125) + 0.0625
    counts, _, _ = np.histogram2d(full[:, 0], full[:, 1], bins=[edges, edges])
    counts = np.ma.masked_equal(counts, 0)
    # Explicit limits: a layer whose bins all hold the same count must still show up.
    norm = LogNorm(vmin=0.5, vmax=max(2.0, float(counts.max())))
    ax.pcolormesh(edges, edges, counts, norm=norm, cmap="Greys")


def plot_positions(module: nn.Module, sets: int = 5, seed: int = 0, max_layers: int = 48, title: str | None = None):
    """A matplotlib figure with one panel per ACU layer: ``sets`` sampled position sets over the
    initial grid (faint), or a log-scale 2-D histogram of all synapses for depthwise-like layers
    with many sets. Rows are alpha (down), columns beta (right), as in image coordinates.

    A plain ``Figure`` on the Agg canvas: no pyplot, so no global figure registry to leak into."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = acu_layers(module)[:max_layers]
    if not layers:
        raise ValueError("the module has no ACU layer to plot")
    cols = min(6, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.4 * rows + (0.3 if title else 0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    for ax, (name, layer) in zip(axes.flat, layers):
        if layer.position_groups >= _HISTOGRAM_MIN_SETS:
            _draw_histogram(ax, layer)
        else:
            _draw_sets(ax, layer, sets, seed)
        reach = max(1.5, layer.spread() + 0.5)
        ax.set_xlim(-reach, reach)
        ax.set_ylim(reach, -reach)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
        ax.set_title(f"{name or 'acu'} (P={layer.position_groups})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    # Fixed margins: tight_layout costs more than the drawing on a many-layer net.
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.04, top=0.9 if title else 0.95, wspace=0.3, hspace=0.4)
    return fig


class PositionPlot(Callback):
    """Every ``every_n_epochs`` training epochs and at the end of fit, a PNG of the learned
    positions of every ACU layer (see ``plot_positions``), written to ``dirpath`` (default:
    ``positions/`` in the trainer's log dir) and added to TensorBoard when it logs. Rank 0 only."""

    def __init__(self, every_n_epochs: int = 1, sets: int = 5, seed: int = 0, dirpath: str | None = None) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: only at the end), got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.sets = sets
        self.seed = seed
        self.dirpath = dirpath
        self._last: tuple[int, Path] | None = None  # (global step, file) of this run's last picture

    def _dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "positions"

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stem: str) -> Path | None:
        """Write ``<stem>.png`` and log it; returns the path (None off rank 0 or without ACUs)."""
        if not trainer.is_global_zero or not acu_layers(pl_module):
            return None
        path = self._dir(trainer) / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._last is not None and self._last[0] == trainer.global_step:
            # Nothing trained since the last picture (e.g. the end right after the last epoch).
            shutil.copyfile(self._last[1], path)
            return path
        title = f"ACU positions, epoch {trainer.current_epoch}, step {trainer.global_step}"
        plot_positions(pl_module, self.sets, self.seed, title=title).savefig(path, dpi=100)
        self._last = (trainer.global_step, path)
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if tensorboards:
            image = np.asarray(Image.open(path).convert("RGB"))  # the PNG, not a second rendering
            for logger in tensorboards:
                logger.experiment.add_image("acu_positions", image, trainer.global_step, dataformats="HWC")
        return path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module, "final")
