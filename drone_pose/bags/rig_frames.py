"""A multi-camera rosbag2 file read without ROS: the frames of V cameras grouped by stamp, the
cameras' extrinsics from /tf_static and the rig's ground truth, as `drone-pose synth-bag --cameras N`
writes them.

Per camera NAME: /NAME/image_raw, /NAME/camera_info and /NAME/ground_truth/pose (drone_pose.bags.frames);
for the rig: /ground_truth/pose (PoseStamped of the drone body in the rig frame, `world` in our
bags) and /tf_static (rig frame -> each camera's optical frame, the images' header.frame_id).
A group is the frames of the cameras that share one stamp; a camera without a frame at that stamp
is absent from the group (a partial group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drone_pose.bags import messages
from drone_pose.bags.frames import (
    BagError,
    camera_frames,
    camera_topics,
    open_bag,
    read_topics,
    rigid_pose,
    true_pose,
)

TRUTH_TOPIC = "/ground_truth/pose"
TF_STATIC_TOPIC = "/tf_static"


def bag_cameras(bag: str | Path) -> list[str]:
    """The cameras of a bag: its custom metadata's `drone_pose.cameras` (drone-pose synth-bag), else
    every NAME with a /NAME/image_raw topic, in topic order."""
    return _cameras_and_topics(bag)[0]


def _cameras_and_topics(bag: str | Path) -> tuple[list[str], set[str]]:
    """bag_cameras and the bag's topics."""
    with open_bag(bag) as reader:
        topics = {c.topic for c in reader.connections}
        listed = (reader.storage.metadata.custom or {}).get("drone_pose.cameras", "")
    if listed.strip():
        return [name.strip() for name in listed.split(",") if name.strip()], topics
    found = {topic[1 : -len("/image_raw")] for topic in topics if topic.endswith("/image_raw")}
    return sorted(name for name in found if name and "/" not in name), topics


@dataclass(frozen=True)
class StaticTransforms:
    """The static TF tree of a bag: child frame -> (parent frame, parent_from_child [4,4] float64,
    metres; p_parent = T p_child)."""

    parents: dict[str, tuple[str, np.ndarray]]

    @classmethod
    def of(cls, tf_messages: Sequence[Any]) -> StaticTransforms:
        """The tree of tf2_msgs/TFMessage messages (later transforms of a child replace earlier ones)."""
        parents = {}
        for message in tf_messages:
            for transform in message.transforms:
                pose = rigid_pose(transform.transform.rotation, transform.transform.translation)
                if pose is not None:
                    parents[transform.child_frame_id] = (transform.header.frame_id, _homogeneous(*pose))
        return cls(parents)

    def root_path(self, frame: str) -> list[str]:
        """The frames from `frame` up to its tree's root, both included."""
        path = [frame]
        while path[-1] in self.parents and len(path) <= len(self.parents):
            path.append(self.parents[path[-1]][0])
        return path

    def root_from(self, frame: str) -> np.ndarray:
        """root_from_frame [4,4] float64: the pose of `frame` in the root of its tree."""
        T = np.eye(4)
        for child in self.root_path(frame)[:-1]:
            T = self.parents[child][1] @ T
        return T

    def lookup(self, target: str, source: str, where: str = "") -> np.ndarray:
        """target_from_source [4,4] float64 (p_target = T p_source); BagError naming both frames when
        /tf_static does not connect them."""
        if self.root_path(target)[-1] != self.root_path(source)[-1]:
            known = ", ".join(sorted(self.parents)) or "none"
            raise BagError(
                f"{where}/tf_static does not connect {source!r} to {target!r} (frames with a static "
                f"transform: {known}); give the extrinsics with --rig-file"
            )
        return np.linalg.inv(self.root_from(target)) @ self.root_from(source)


@dataclass(frozen=True)
class FrameGroup:
    """The frames of one stamp: views, one per camera in the rig's order (a read_frames frame dict,
    None where the camera has no frame at that stamp), and the rig's ground truth R [3,3], t [3]
    metres (truth frame <- drone body; NaN when read without requiring ground truth and the bag
    has none at that stamp)."""

    stamp: int
    views: tuple[dict[str, Any] | None, ...]
    R: np.ndarray
    t: np.ndarray

    def present(self) -> list[int]:
        """The indices of the cameras with a frame in this group."""
        return [v for v, view in enumerate(self.views) if view is not None]


@dataclass(frozen=True)
class RigFrames:
    """A multi-camera bag's frames: cameras (names, in view order), frame_ids (each camera's optical
    frame, its images' header.frame_id), groups in stamp order, truth_frame (the frame of
    /ground_truth/pose), static (the /tf_static tree) and skipped (counts of left-out messages:
    per camera, its read_frames counts; no_rig_ground_truth: stamps without a finite
    /ground_truth/pose)."""

    bag: str
    cameras: tuple[str, ...]
    frame_ids: tuple[str, ...]
    groups: list[FrameGroup]
    truth_frame: str
    static: StaticTransforms
    skipped: dict[str, Any]

    def tf_extrinsics(self) -> tuple[str, np.ndarray]:
        """(rig frame, cam_from_rig [V,4,4] float64) from /tf_static: the rig frame is the truth frame
        (the frame fused poses are scored in); BagError when a camera's frame is not connected to it."""
        cam_from_rig = [
            self.static.lookup(frame_id, self.truth_frame, f"{self.bag}: ") for frame_id in self.frame_ids
        ]
        return self.truth_frame, np.stack(cam_from_rig)


def read_rig_frames(
    bag: str | Path, cameras: Sequence[str] | None = None, require_truth: bool = True
) -> RigFrames:
    """The frames of `cameras` (default: bag_cameras) grouped by stamp, with the rig's ground truth
    and static TF; BagError (one line) for a camera the bag lacks, a camera without a usable frame,
    a missing /ground_truth/pose or one without a single usable pose. require_truth False (a
    recorded flight, e.g. for rig calibration): ground truth is read where the bag has it and
    not needed (groups without it hold NaN; truth_frame is "" when the bag has none)."""
    found, topics_found = _cameras_and_topics(bag)
    cameras = list(found if cameras is None else cameras)
    if not cameras:
        raise BagError(f"{bag}: no /NAME/image_raw topic: not a camera bag")
    if len(set(cameras)) != len(cameras):
        raise BagError(f"cameras {', '.join(cameras)}: a camera is named twice")
    for camera in cameras:
        if camera_topics(camera)[0] not in topics_found:
            raise BagError(
                f"{bag}: no /{camera}/image_raw topic; the bag's cameras: {', '.join(found) or 'none'}"
            )
    topics = [topic for camera in cameras for topic in camera_topics(camera)]
    read, undecodable = read_topics(bag, [*topics, TRUTH_TOPIC, TF_STATIC_TOPIC])
    per_camera, skipped = [], {}
    for camera in cameras:
        images, infos, truths = (read[topic] for topic in camera_topics(camera))
        if not images:
            raise BagError(
                f"{bag}: no /{camera}/image_raw messages; the bag's cameras: {', '.join(found) or 'none'}"
            )
        frames, skipped[camera] = camera_frames(images, infos, truths, require_truth=require_truth)
        if not frames:
            needed = "camera_info and ground truth" if require_truth else "camera_info"
            raise BagError(f"{bag}: no frame of /{camera} has {needed}; check the bag")
        per_camera.append({frame["stamp"]: frame for frame in frames})
    if require_truth or read[TRUTH_TOPIC]:
        truth, truth_frame, skipped["no_rig_ground_truth"] = _rig_truth(bag, read[TRUTH_TOPIC])
    else:
        truth, truth_frame, skipped["no_rig_ground_truth"] = {}, "", 0
    skipped["undecodable"] = undecodable
    groups = []
    unknown = (np.full((3, 3), np.nan), np.full(3, np.nan))
    for stamp in sorted(set().union(*per_camera)):
        if stamp not in truth:
            skipped["no_rig_ground_truth"] += 1
            if require_truth:
                continue
        views = tuple(frames.get(stamp) for frames in per_camera)
        groups.append(FrameGroup(stamp, views, *truth.get(stamp, unknown)))
    if not groups:
        raise BagError(f"{bag}: no stamp has both a camera frame and a {TRUTH_TOPIC}; check the bag")
    frame_ids = tuple(next(iter(frames.values()))["frame_id"] for frames in per_camera)
    return RigFrames(
        str(bag),
        tuple(cameras),
        frame_ids,
        groups,
        truth_frame,
        StaticTransforms.of(read[TF_STATIC_TOPIC]),
        skipped,
    )


def _rig_truth(
    bag: str | Path, poses: Sequence[Any]
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], str, int]:
    """Stamp -> (R [3,3], t [3] metres) of the finite /ground_truth/pose messages, their frame and the
    count of non-finite ones; BagError when the topic is missing or names several frames."""
    if not poses:
        raise BagError(f"{bag}: no {TRUTH_TOPIC} messages (the drone in the rig frame) to score against")
    frames = {message.header.frame_id for message in poses}
    if len(frames) != 1:
        raise BagError(f"{bag}: {TRUTH_TOPIC} is in several frames ({', '.join(sorted(frames))}), not one")
    truth, bad = {}, 0
    for message in poses:
        pose = true_pose(message.pose)
        if pose is None:
            bad += 1
        else:
            truth[messages.stamp_ns(message.header)] = pose
    return truth, frames.pop(), bad


def _homogeneous(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[4,4] float64 of a rotation R [3,3] and translation t [3]."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T
