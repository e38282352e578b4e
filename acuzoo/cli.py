"""The ``acuzoo`` command (and ``train.py``): LightningCLI's fit/validate/test/predict, plus any
subcommand registered in ``SUBCOMMANDS`` (e.g. checkpoint conversion or export), which gets its
own handler and never builds a Trainer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pytorch_lightning.callbacks import ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from .bundled import bundled_configs, config_purpose, configs_dir, resolve_config
from .hub.commands import COMMANDS as HUB_COMMANDS
from .hub.commands import DEBUG_FLAG, USER_ERRORS, user_errors_reported
from .lit import ClassificationData, ImageClassifier, LastStateCheckpoint, RandomState

Handler = Callable[[list[str]], Any]
# Subcommands that are not a Trainer run: name -> handler(argv after the name).
SUBCOMMANDS: dict[str, Handler] = {}


def subcommand(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler(argv)`` as ``acuzoo <name> ...``."""
    if name in LightningCLI.subcommands():
        raise ValueError(f"'{name}' is a LightningCLI subcommand")

    def register(handler: Handler) -> Handler:
        SUBCOMMANDS[name] = handler
        return handler

    return register


# The hub's commands: acuzoo convert (weights -> acuzoo checkpoints), acuzoo export (ONNX/TorchScript).
for _name, _handler in HUB_COMMANDS.items():
    subcommand(_name)(_handler)


@subcommand("configs")
def list_configs(argv: list[str]) -> None:
    """``acuzoo configs``: the bundled configs, each with its one-line purpose."""
    parser = argparse.ArgumentParser(
        prog="acuzoo configs", description="List the configs that ship with acuzoo (acuzoo fit --config NAME)."
    )
    parser.parse_args(argv)
    configs = bundled_configs()
    width = max(map(len, configs), default=0)
    print(f"bundled configs ({configs_dir()}); use one with: acuzoo fit --config NAME")
    for name, path in configs.items():
        print(f"  {name:<{width}}  {config_purpose(path)}")


# One line per subcommand for ``acuzoo --help``.
SUMMARIES = {
    "fit": "train (and validate) a model: acuzoo fit --config quickstart",
    "validate": "run one validation epoch",
    "test": "run one test epoch",
    "predict": "run prediction",
    "convert": "timm / torchvision / Lightning weights -> acuzoo checkpoints (safetensors)",
    "export": "fuse every ACU into a conv and export ONNX, TorchScript or a torch.export program",
    "configs": "list the bundled configs with their purpose",
}


def overview() -> str:
    """The text of ``acuzoo --help``: every subcommand, one line each."""
    names = [*LightningCLI.subcommands(), *SUBCOMMANDS]
    width = max(map(len, names))
    rows = "\n".join(f"  {name:<{width}}  {SUMMARIES.get(name, '')}".rstrip() for name in names)
    return (
        "usage: acuzoo <subcommand> [options]   (also: python -m acuzoo, python train.py)\n\n"
        f"subcommands:\n{rows}\n\n"
        "acuzoo <subcommand> --help shows a subcommand's options. --config takes a file or a bundled config's\n"
        f"name (acuzoo configs lists them). {DEBUG_FLAG}: show the traceback of an error instead of one line."
    )


def with_bundled_configs(args: list[str]) -> list[str]:
    """``args`` with every ``--config NAME`` that is not a file replaced by the bundled config's path."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = str(resolve_config(resolved[i + 1]))
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + str(resolve_config(arg.partition("=")[2]))
    return resolved


def default_loggers(save_dir: str, name: str) -> list[Logger]:
    """CSV logs, and TensorBoard's beside them (same version folder) when it is installed."""
    csv = CSVLogger(save_dir, name=name)
    loggers: list[Logger] = [csv]
    try:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir, name=name, version=csv.version, default_hp_metric=False))
    except ModuleNotFoundError:  # neither tensorboard nor tensorboardX
        pass
    return loggers


class AcuzooCLI(LightningCLI):
    """LightningCLI with ``ImageClassifier`` and any ``ClassificationData``, and the defaults a user
    expects: seed 0, a Rich progress bar, CSV (+ TensorBoard) logs under ``lightning_logs/<run_name>/``,
    best (``val/acc1``) checkpoints and a ``last.ckpt`` that always holds the latest step, the random
    generators' states in every checkpoint (``--ckpt_path .../last.ckpt`` resumes exactly), and
    ``test_after_fit`` to test right after fit."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            ImageClassifier,
            ClassificationData,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str | None, default=None, help="log folder name (default: model)")
        parser.add_argument("--test_after_fit", type=bool, default=False, help="fit, then test the best checkpoint")
        parser.add_lightning_class_args(LastStateCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def _subcommand_config(self) -> Any:
        return self.config_init[self.subcommand] if self.subcommand else self.config_init

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self._subcommand_config()
        trainer = config.get("trainer", {})
        callbacks = list(trainer.get("callbacks") or [])
        if not any(isinstance(c, RandomState) for c in callbacks):
            callbacks.append(RandomState())
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar())
        kwargs["callbacks"] = callbacks
        if trainer.get("logger") in (None, True):
            name = config.get("run_name") or self.model.hparams.get("model_name", "run")
            kwargs["logger"] = default_loggers(trainer.get("default_root_dir") or "lightning_logs", name)
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if not self._subcommand_config().get("test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and checkpoint.best_model_path else None
        rank_zero_info(f"test_after_fit: testing {'the best checkpoint' if ckpt_path else 'the final weights'}")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def main(argv: Sequence[str] | None = None) -> None:
    """``acuzoo <subcommand> ...``: a registered handler, else LightningCLI (fit/validate/test/predict).

    A user error (a missing file, a bad value) ends with one ``acuzoo <subcommand>: error: ...``
    line on stderr and exit status 2; ``--debug`` anywhere shows the traceback instead."""
    given = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in given
    args = [a for a in given if a != DEBUG_FLAG]
    name = args[0] if args and not args[0].startswith("-") else None
    known = [*LightningCLI.subcommands(), *SUBCOMMANDS]
    if name is None and (not args or args[0] in ("-h", "--help")):
        print(overview(), file=sys.stdout if args else sys.stderr)
        raise SystemExit(0 if args else 2)
    if name is not None and name not in known:
        print(f"acuzoo: error: unknown subcommand '{name}' (choose from {', '.join(known)})", file=sys.stderr)
        raise SystemExit(2)
    prog = f"acuzoo {name}" if name else "acuzoo"
    if name in SUBCOMMANDS:
        with user_errors_reported(prog, debug):
            SUBCOMMANDS[name](args[1:])
        return
    with user_errors_reported(prog, debug):
        args = with_bundled_configs(args)
    if argv is None:
        sys.argv[1:] = args  # what LightningCLI (and DDP's launcher, replaying sys.argv) reads
    # The subcommands' usage lists every option (a hundred lines): errors print without it.
    parser_kwargs: dict[str, Any] = {sub: {"usage": argparse.SUPPRESS} for sub in LightningCLI.subcommands()}
    parser_kwargs["epilog"] = (
        f"more subcommands: {', '.join(SUBCOMMANDS)} (acuzoo <subcommand> --help). "
        f"{DEBUG_FLAG}: show the traceback of an error instead of one line."
    )
    with user_errors_reported(prog, debug, (*USER_ERRORS, MisconfigurationException)):
        # argv None: LightningCLI reads sys.argv itself, which DDP's launcher replays in each process.
        AcuzooCLI(args=None if argv is None else args, parser_kwargs=parser_kwargs)


if __name__ == "__main__":
    main()
