"""Arguments several `drone-pose` commands share: a checkpoint over a dataset split, the flip test,
the zoomed second pass."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drone_pose.nets.zoom import ZoomSettings


def add_flip_test_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--flip-test: checkpoint (its input.flip_test), off, zoom or all; `what` completes its help."""
    parser.add_argument(
        "--flip-test",
        choices=("checkpoint", "off", "zoom", "all"),  # drone_pose.nets.flip.FLIP_TEST_MODES
        default="checkpoint",
        help=f"{what}: checkpoint (its input.flip_test, default), off, zoom (the second pass only) or all",
    )


def split_options(args: argparse.Namespace) -> dict[str, object]:
    """The options add_split_arguments declares, as keyword arguments (checkpoint and data aside)."""
    keys = ("split", "out", "uava_drone", "device", "batch_size", "limit")
    return {key: getattr(args, key) for key in keys}


def add_split_arguments(parser: argparse.ArgumentParser, split: str, split_help: str, out_help: str) -> None:
    """A checkpoint run over one split of a dataset: the arguments eval and calibrate-covariance share."""
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="dataset folder (drone-pose synth) or UAVA root")
    parser.add_argument("--split", default=split, help=split_help)
    parser.add_argument("--uava-drone", help="read --data as a UAVA root for this drone")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--device", type=device_option, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--limit", type=positive_int, help="only the first N samples")


def zoom_option(text: str) -> ZoomSettings | str | None:
    """--zoom: checkpoint (its input.zoom), off, or TARGET_PX[,MAX_ZOOM]."""
    from drone_pose.nets.zoom import ZoomSettings

    if text in ("checkpoint", "off"):
        return None if text == "off" else text
    try:
        values = [float(v) for v in text.split(",")]
        if len(values) > 2:
            raise ValueError("at most two numbers")
        return ZoomSettings(*values)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"--zoom must be checkpoint, off or TARGET_PX[,MAX_ZOOM], got {text!r} ({error})"
        ) from None


def _number(kind: type, text: str, minimum: float, inclusive: bool) -> int | float:
    """`text` as `kind`, at least (or above) `minimum`, finite; ArgumentTypeError otherwise."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__} number, got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (counts, sizes, workers, batch sizes)."""
    return int(_number(int, text, 1, True))


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return int(_number(int, text, 0, True))


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, rates)."""
    return float(_number(float, text, 0, False))


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (noise, delays)."""
    return float(_number(float, text, 0, True))


def device_option(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu or cuda") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine's torch sees {count} CUDA device(s); use cpu"
            )
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; use cpu or cuda")
    return text


def node_device_option(text: str) -> str:
    """An argparse type: the tracker's device, auto or as device_option."""
    return text if text == "auto" else device_option(text)
