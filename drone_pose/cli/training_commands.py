"""`drone-pose train | reproduce`: train a keypoint network; the study's experiment grid."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from drone_pose.cli.arguments import positive_int
from drone_pose.errors import UserError


def _cmd_train(args: argparse.Namespace) -> int:
    from drone_pose.train.config import load_config
    from drone_pose.train.run_state import place_in_run_folder
    from drone_pose.train.trainer import train

    config = load_config(args.config, args.overrides)  # fails here, before any data is read
    config = place_in_run_folder(config, args.config, args.overrides)
    summary = train(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if summary["rank"] != 0:
        return 0  # under torchrun only rank 0 reports
    last = summary["history"][-1] if summary["history"] else {}
    print(
        json.dumps(
            {
                "run_dir": summary["run_dir"],
                "best": summary["best"],
                "last_epoch": last,
                "swa": summary["swa"],
                "parameters": summary["parameters"],
                "train_s": round(summary["train_s"], 1),
            },
            indent=2,
        )
    )
    return 0


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a keypoint network (config YAML + key=value overrides)")
    train.add_argument("--config", help="experiment YAML (config/train/*.yaml); default: built-in defaults")
    train.add_argument("overrides", nargs="*", help="overrides such as epochs=2 loss.kind=pose data.path=DIR")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last.pt (a moved run: --config RUN_DIR/config.yaml)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a RUN_DIR that holds a run, replacing its files",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_cmd_train)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from drone_pose.train.reproduce import reproduce

    network = args.network
    if network is not None and network.lstrip().startswith("{"):
        try:
            network = json.loads(network)
        except json.JSONDecodeError as error:
            raise UserError(
                f"--network is not valid JSON ({error}); give a preset name or a JSON mapping"
            ) from None
    summary = reproduce(
        args.out,
        args.results,
        drones=tuple(args.drones),
        tables=tuple(args.tables),
        epochs=args.epochs,
        images=args.images,
        network=network,
        width=args.width,
        height=args.height,
        extra=tuple(args.set or ()),
        init=_drone_checkpoints(args.init or ()),
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _drone_checkpoints(pairs: Sequence[str]) -> dict[str, str]:
    """`DRONE=CHECKPOINT` arguments as a mapping; UserError for a malformed one or a missing file."""
    result = {}
    for pair in pairs:
        drone, sep, path = pair.partition("=")
        if not sep or not drone or not path:
            raise UserError(f"--init {pair!r} must look like DRONE=CHECKPOINT")
        if not Path(path).is_file():
            raise UserError(f"--init {drone}: checkpoint not found: {path}")
        result[drone] = path
    return result


def _add_reproduce(commands: argparse._SubParsersAction) -> None:
    grid = commands.add_parser("reproduce", help="the study's Tables 3-7 at a chosen scale -> results page")
    grid.add_argument("--out", default="reproduce", help="work folder: data/, runs/, reports/")
    grid.add_argument("--results", default="docs/results.md", help="the results page to write")
    grid.add_argument("--drones", nargs="+", default=["m2ed", "tello"])
    grid.add_argument("--tables", type=int, nargs="+", default=[3, 4, 5, 6, 7], choices=[3, 4, 5, 6, 7])
    grid.add_argument("--epochs", type=positive_int, default=44, help="epochs per run (the study: 44)")
    grid.add_argument(
        "--images", type=positive_int, default=20000, help="rendered images per drone (80/10/10 split)"
    )
    grid.add_argument("--network", help="replace HRNet-W48 (preset name or JSON mapping), e.g. hrnet_lite")
    grid.add_argument("--width", type=positive_int, default=320)
    grid.add_argument("--height", type=positive_int, default=240)
    grid.add_argument("--set", action="append", help="extra training override for every run (key=value)")
    grid.add_argument(
        "--init",
        action="append",
        metavar="DRONE=CHECKPOINT",
        help="start that drone's rows from a checkpoint where its network fits (others: scratch)",
    )
    grid.add_argument("--no-progress", action="store_true")
    grid.set_defaults(run=_cmd_reproduce)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `drone-pose` parser."""
    _add_train(commands)
    _add_reproduce(commands)
