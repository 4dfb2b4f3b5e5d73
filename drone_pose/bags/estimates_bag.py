"""Estimated poses as a rosbag2 file (MCAP) for RViz or Foxglove: what a tracker would publish.

Per frame with a valid pose: /pose (PoseStamped), /pose_with_covariance
(PoseWithCovarianceStamped, ROS order x, y, z, rot x, rot y, rot z), /tf (image frame -> `child`);
and /overlay (rgb8) for the frames given an overlay image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from drone_pose.atomic_files import atomic_folder
from drone_pose.bags import messages

POSE_WITH_COVARIANCE = "geometry_msgs/msg/PoseWithCovarianceStamped"


@dataclass(frozen=True)
class EstimatedFrame:
    """One frame's estimate: stamp (ns), frame_id of its image, valid, R [3,3], t [3] metres (camera
    optical <- drone), covariance [6,6]."""

    stamp: int
    frame_id: str
    valid: bool
    R: np.ndarray
    t: np.ndarray
    covariance: np.ndarray


def write_estimates_bag(
    path: str | Path,
    frames: Sequence[EstimatedFrame],
    overlay: Callable[[int], np.ndarray | None] | None = None,
    child_frame: str = "drone",
) -> Path:
    """Write the bag at `path` (replacing one that exists, once the new one is complete).
    overlay(index): that frame's overlay image [H,W,3] uint8 RGB or None for none, drawn while the
    bag is written (one image in memory)."""
    path = Path(path)
    with (
        atomic_folder(path) as partial,
        Writer(partial, version=9, storage_plugin=StoragePlugin.MCAP) as writer,
    ):

        def add(topic: str, msgtype: str, depth: int = 10) -> Any:
            return writer.add_connection(
                topic, msgtype, typestore=messages.TYPESTORE, offered_qos_profiles=[messages.bag_qos(depth)]
            )

        pose_c = add("/pose", messages.POSE_STAMPED)
        covariance_c = add("/pose_with_covariance", POSE_WITH_COVARIANCE)
        tf_c = add("/tf", messages.TF_MESSAGE, 100)
        overlay_c = add("/overlay", messages.IMAGE)
        T = messages.T
        for index, frame in enumerate(frames):
            stamp, frame_id = frame.stamp, frame.frame_id
            pixels = None if overlay is None else overlay(index)
            if pixels is not None:
                image = messages.image_rgb8(pixels, stamp, frame_id)
                writer.write(overlay_c, stamp, messages.serialize(image))
            if not frame.valid:
                continue
            pose = messages.pose_stamped(frame.R, frame.t, stamp, frame_id)
            writer.write(pose_c, stamp, messages.serialize(pose))
            with_covariance = T[POSE_WITH_COVARIANCE](
                header=pose.header,
                pose=T["geometry_msgs/msg/PoseWithCovariance"](
                    pose=pose.pose, covariance=np.asarray(frame.covariance, np.float64).reshape(36)
                ),
            )
            writer.write(covariance_c, stamp, messages.serialize(with_covariance))
            transform = messages.transform_stamped(frame.R, frame.t, stamp, frame_id, child_frame)
            writer.write(tf_c, stamp, messages.serialize(messages.tf_message([transform])))
    return path
