"""`drone-pose` command line: one entry point with subcommands, each declared beside its handler in
the module of its layer (data, training, evaluation, inference, bench, ros)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from drone_pose import __version__
from drone_pose.cli import (
    bench_commands,
    data_commands,
    evaluation_commands,
    inference_commands,
    ros_commands,
    training_commands,
)
from drone_pose.cli.signals import run_stoppable

COMMAND_MODULES = (
    data_commands,
    training_commands,
    evaluation_commands,
    inference_commands,
    bench_commands,
    ros_commands,
)


def build_parser() -> argparse.ArgumentParser:
    """The `drone-pose` parser with every subcommand; each sets `run`, its handler."""
    parser = argparse.ArgumentParser(prog="drone-pose", description="6-DoF drone pose estimation tools.")
    parser.add_argument("--version", action="version", version=f"drone_pose {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `drone-pose` with `argv` (default: sys.argv[1:]); returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_stoppable(lambda: int(args.run(args)))  # SIGTERM stops a command as Ctrl-C does
