"""`drone-pose` command line: one entry point with subcommands, each declared beside its handler in
the module of its layer (data, training, evaluation, inference, bench, ros).

A user error (drone_pose.errors.UserError, an OSError naming a file, a bad argument) is one line
on stderr, `drone-pose CMD: error: ...`, and exit status 2; `--debug` or DRONE_POSE_DEBUG=1 shows
its traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
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
from drone_pose.errors import UserError

COMMAND_MODULES = (
    data_commands,
    training_commands,
    evaluation_commands,
    inference_commands,
    bench_commands,
    ros_commands,
)


DEBUG_ENVIRONMENT = "DRONE_POSE_DEBUG"
OS_ERROR_HINTS = {  # what to do about an OSError on a path the user named
    errno.ENOSPC: "free disk space and run again",
    errno.EDQUOT: "free disk space and run again",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "choose a writable location",
    errno.EEXIST: "choose another path (it exists and is not a folder)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "name a file, not a folder",
}
USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), pointing at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's NoReturn
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `drone-pose` parser with every subcommand; each sets `run`, its handler."""
    parser = OneLineParser(prog="drone-pose", description="6-DoF drone pose estimation tools.")
    parser.add_argument("--version", action="version", version=f"drone_pose {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of a user error (also: {DEBUG_ENVIRONMENT}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `drone-pose` with `argv` (default: sys.argv[1:]); returns the exit status."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENVIRONMENT, "").strip() not in ("", "0")
    try:
        return run_stoppable(lambda: int(args.run(args)))  # SIGTERM stops a command as Ctrl-C does
    except (UserError, OSError) as error:
        message = user_error_message(error)
        if debug or message is None:
            raise
        print(f"drone-pose {args.command}: error: {message}", file=sys.stderr)
        return USAGE_ERROR


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error; None for an exception that is a bug (an OSError that
    names no file comes from inside a library, not from a path the user gave)."""
    if isinstance(error, OSError):
        if error.filename is None:
            return None
        reason = error.strerror or type(error).__name__
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        hint = OS_ERROR_HINTS.get(error.errno or 0, "check the path")
        return f"{error.filename}{target}: {reason}; {hint}"
    text = " ".join(str(error).split())  # one line whatever the message
    return text or type(error).__name__
