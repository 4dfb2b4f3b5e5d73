"""A rosbag2 file's camera frames, read without ROS (`rosbags`): images paired by stamp with their
CameraInfo and ground-truth pose, as `drone-pose synth-bag` writes them.

Topics of camera NAME: /NAME/image_raw (rgb8, bgr8, mono8), /NAME/camera_info and
/NAME/ground_truth/pose (PoseStamped in the camera optical frame, camera <- drone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rosbags.rosbag2 import Reader, ReaderError

from drone_pose.bags import messages
from drone_pose.errors import UserError
from drone_pose.geometry.distortion import Distortion, distortion_or_none
from drone_pose.geometry.rotations import quaternion_xyzw_to_matrix


class BagError(UserError):
    """A bag that is missing, that rosbags cannot open, or whose storage is corrupt."""


@contextlib.contextmanager
def open_bag(bag: str | Path) -> Iterator[Reader]:
    """An open rosbags Reader of `bag` (a rosbag2 folder, or a bare .mcap / .db3 file), closed at the
    end of the block; BagError naming the bag when it is missing or unreadable."""
    try:
        reader = Reader(bag)
        reader.open()
    except (OSError, ReaderError) as error:
        raise BagError(
            f"{bag}: not a readable rosbag2 bag ({' '.join(str(error).split())}); give the folder "
            "`ros2 bag record` or `drone-pose synth-bag` wrote"
        ) from error
    try:
        yield reader
    finally:
        reader.close()


def image_array(msg: Any) -> np.ndarray:
    """[H,W,3] uint8 RGB of a rosbags sensor_msgs/Image (rgb8, bgr8, mono8); ValueError otherwise."""
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(msg.encoding)
    if channels is None:
        raise ValueError(f"unsupported encoding {msg.encoding!r}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    if height <= 0 or width <= 0 or step < width * channels or data.size < step * height:
        raise ValueError(f"malformed {width}x{height} image (step {step}, {data.size} bytes)")
    pixels = (
        data[: step * height].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    )
    if msg.encoding == "bgr8":
        return pixels[..., ::-1]
    return np.repeat(pixels, 3, axis=2) if channels == 1 else pixels


def read_frames(bag: str | Path, camera: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Frames of one camera, in stamp order, and counts of skipped messages.

    Each frame: stamp (ns), frame_id, rgb [H,W,3] uint8, K [3,3], distortion (the CameraInfo's lens
    model, drone_pose.geometry.distortion; None for a pinhole camera), R [3,3] and t [3] metres (the
    true pose, camera optical <- drone). Frames without CameraInfo or ground truth, with a CameraInfo
    that is not a finite pinhole camera of a supported lens model, or with a non-finite ground-truth
    pose are skipped and counted.
    """
    topics = camera_topics(camera)
    read, undecodable = read_topics(bag, topics, required=topics[0], hint="check --camera")
    return camera_frames(*(read[topic] for topic in topics), undecodable=undecodable)


def camera_topics(camera: str) -> tuple[str, str, str]:
    """A camera's image, CameraInfo and ground-truth pose topics."""
    return f"/{camera}/image_raw", f"/{camera}/camera_info", f"/{camera}/ground_truth/pose"


def read_topics(
    bag: str | Path, topics: Sequence[str], required: str | None = None, hint: str = ""
) -> tuple[dict[str, list[Any]], int]:
    """The deserialized messages of `topics` in the bag (topic -> messages in bag order; [] for a
    topic the bag lacks) and the count of undecodable ones. BagError for an unreadable bag, or one
    without the topic `required` (the message ends with `hint`)."""
    read: dict[str, list[Any]] = {topic: [] for topic in topics}
    undecodable = 0
    try:
        with open_bag(bag) as reader:
            connections = [c for c in reader.connections if c.topic in read]
            if required is not None and not any(c.topic == required for c in connections):
                raise BagError(f"{bag}: no {required} topic{'; ' + hint if hint else ''}")
            for connection, _, raw in reader.messages(connections=connections):
                try:
                    message = messages.deserialize(raw, connection.msgtype)
                except Exception:  # rosbags raises several types for corrupt CDR
                    undecodable += 1
                    continue
                read[connection.topic].append(message)
    except BagError:
        raise
    except Exception as error:  # corrupt storage: ReaderError, UnicodeDecodeError, KeyError, MemoryError...
        raise BagError(f"{bag}: not a readable rosbag2 bag ({type(error).__name__}: {error})") from error
    return read, undecodable


def camera_frames(
    images: Sequence[Any],
    infos: Sequence[Any],
    truths: Sequence[Any],
    undecodable: int = 0,
    require_truth: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One camera's Image, CameraInfo and ground-truth PoseStamped messages paired by stamp into
    frames (read_frames), and the counts of skipped messages (undecodable: that many already).
    require_truth False: frames without a (usable) ground truth are kept, with R and t None."""
    by_stamp = [{messages.stamp_ns(m.header): m for m in topic} for topic in (images, infos, truths)]
    images_at, infos_at, truths_at = by_stamp
    skipped = {
        "undecodable": undecodable,
        "no_camera_info": 0,
        "no_ground_truth": 0,
        "bad_camera_info": 0,
        "bad_ground_truth": 0,
    }
    frames = []
    for stamp in sorted(images_at):
        if stamp not in infos_at:
            skipped["no_camera_info"] += 1
            continue
        if stamp not in truths_at and require_truth:
            skipped["no_ground_truth"] += 1
            continue
        try:
            rgb = image_array(images_at[stamp])
        except ValueError:
            skipped["undecodable"] += 1
            continue
        camera_model = _camera_model(infos_at[stamp])
        if camera_model is None:
            skipped["bad_camera_info"] += 1
            continue
        truth = true_pose(truths_at[stamp].pose) if stamp in truths_at else None
        if truth is None and require_truth:
            skipped["bad_ground_truth"] += 1
            continue
        frames.append(
            {
                "stamp": stamp,
                "frame_id": images_at[stamp].header.frame_id,
                "rgb": rgb,
                "K": camera_model[0],
                "distortion": camera_model[1],
                "R": None if truth is None else truth[0],
                "t": None if truth is None else truth[1],
            }
        )
    return frames, skipped


def _camera_model(info: Any) -> tuple[np.ndarray, Distortion | None] | None:
    """(K [3,3], lens distortion or None) of a CameraInfo; None when K is not a finite pinhole matrix
    with positive focal lengths or the distortion is unsupported or non-finite."""
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        return None
    try:
        return K, distortion_or_none(str(info.distortion_model), np.asarray(info.d, dtype=np.float64))
    except ValueError:
        return None


def true_pose(pose: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(R [3,3], t [3] metres) of a geometry_msgs/Pose; None when it is not finite or its quaternion
    has no length."""
    return rigid_pose(pose.orientation, pose.position)


def rigid_pose(rotation: Any, translation: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(R [3,3], t [3] metres) of a quaternion message (x, y, z, w) and a point or vector message
    (x, y, z): a Pose's orientation and position, a Transform's rotation and translation; None when
    they are not finite or the quaternion has no length (it is normalised)."""
    q = np.array([rotation.x, rotation.y, rotation.z, rotation.w], dtype=np.float64)
    t = np.array([translation.x, translation.y, translation.z], dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not (np.isfinite(q).all() and np.isfinite(t).all() and norm > 1e-6):
        return None
    return quaternion_xyzw_to_matrix(torch.tensor(q / norm, dtype=torch.float64)).numpy(), t


def bag_drone(bag: str | Path) -> str | None:
    """The drone a `drone-pose synth-bag` bag shows (its custom metadata), None for other bags.

    rosbags keeps a bag's metadata.yaml (custom_data included) on the storage reader the unified
    Reader opens (`Reader.storage.metadata`); a bare .mcap or .db3 file has no custom data.
    """
    with open_bag(bag) as reader:
        return (reader.storage.metadata.custom or {}).get("drone_pose.drone")
