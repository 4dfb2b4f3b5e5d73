"""A checkpoint is scored only on data of the drone it was trained for."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Subset

from drone_pose.errors import UserError


class DroneMismatchError(UserError):
    """A checkpoint trained for one drone asked to run on data of another."""


def data_drone(dataset: Any) -> str | None:
    """The drone a dataset shows: dataset.json's `drone` (a synthetic folder) or the UAVA drone's
    name; None when the dataset does not say. Subsets are unwrapped."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    drone = getattr(dataset, "drone", None)
    name = getattr(drone, "name", drone)
    return str(name) if name else None


def refuse_other_drone(checkpoint_drone: str, shown_drone: str | None, data: str) -> None:
    """DroneMismatchError when `data` (a path, named in the message) shows a drone other than the
    checkpoint's; data that names no drone is accepted."""
    if shown_drone and checkpoint_drone and shown_drone != checkpoint_drone:
        raise DroneMismatchError(
            f"{data} shows drone {shown_drone!r} but the checkpoint is trained for {checkpoint_drone!r}: "
            f"evaluate a {shown_drone} checkpoint on it"
        )
