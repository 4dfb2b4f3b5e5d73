"""Rig files: a camera rig's extrinsics in YAML, for the fusion node when TF does not carry them.

```yaml
rig_frame: rig                    # the frame fused poses are expressed in
cameras:                          # in order: the order of the views
  left:                           # camera name (the camera's namespace in the node)
    frame_id: left_optical        # its optical frame (the images' header.frame_id)
    rig_from_camera:              # pose of the camera in the rig: p_rig = R(q) p_cam + t
      translation: [0.0, 0.06, 0.0]          # metres
      rotation_xyzw: [-0.5, 0.5, -0.5, 0.5]  # unit quaternion x, y, z, w
  right:
    frame_id: right_optical
    rig_from_camera:
      translation: [0.0, -0.06, 0.0]
      rotation_xyzw: [-0.5, 0.5, -0.5, 0.5]
```

rig_from_camera is the transform TF would carry as rig_frame -> frame_id (parent rig, child
camera optical frame: x right, y down, z forward). Rig keeps the inverse, cam_from_rig
(drone_pose.fusion.rig's convention). Rules: at least one camera; camera names are ROS names
(letters, digits, "_", "/"-separated, not starting with a digit); frame ids are non-empty, without
spaces or a leading "/", and distinct; a camera whose frame_id is rig_frame (the rig frame is that
camera's optical frame) must have the identity pose. A quaternion must be within 1e-3 of unit
norm (hand-written quaternions rounded to three decimals pass; a mistyped one does not) and is
normalised. No other keys. Every mistake raises RigFileError, one line naming the file and key.
save_rig_file writes the same format (full float precision, quaternions with w >= 0) atomically.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.spatial.transform import Rotation

from drone_pose.atomic_files import write_text
from drone_pose.errors import UserError

QUATERNION_NORM_TOLERANCE = 1e-3
RIGID_TOLERANCE = 1e-6
ROS_NAME = re.compile(r"/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")
FILE_KEYS = ("rig_frame", "cameras")
CAMERA_KEYS = ("frame_id", "rig_from_camera")
POSE_KEYS = ("translation", "rotation_xyzw")
HELP = "see docs/fusion.md#rig-files"


class RigFileError(UserError):
    """A rig file that is missing or malformed; the message names the file and the key."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (a camera listed twice)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """The inverses [...,4,4] float64 of rigid transforms [...,4,4]."""
    R_t = np.swapaxes(T[..., :3, :3], -1, -2)
    inverse = np.zeros(T.shape)
    inverse[..., :3, :3] = R_t
    inverse[..., :3, 3] = -(R_t @ T[..., :3, 3, None])[..., 0]
    inverse[..., 3, 3] = 1.0
    return inverse


def valid_frame_id(frame_id: object) -> bool:
    """A usable TF frame id: a non-empty string without whitespace or a leading '/'."""
    return (
        isinstance(frame_id, str)
        and bool(frame_id)
        and not frame_id.startswith("/")
        and not any(c.isspace() for c in frame_id)
    )


@dataclass(frozen=True, eq=False)
class Rig:
    """A camera rig: V cameras (names and optical frame ids, in view order) and their extrinsics
    cam_from_rig [V,4,4] float64 (p_cam = T p_rig, metres; read-only), in frame rig_frame.

    ValueError when the fields disagree (lengths, duplicates, a non-rigid transform)."""

    rig_frame: str
    camera_names: tuple[str, ...]
    frame_ids: tuple[str, ...]
    cam_from_rig: np.ndarray

    def __post_init__(self) -> None:
        names, frames = tuple(self.camera_names), tuple(self.frame_ids)
        T = np.array(self.cam_from_rig, dtype=np.float64)
        if T.ndim != 3 or T.shape[1:] != (4, 4) or not (len(names) == len(frames) == len(T) > 0):
            raise ValueError(
                f"a rig needs V >= 1 camera names, V frame ids and cam_from_rig [V, 4, 4]; got "
                f"{len(names)}, {len(frames)} and {list(T.shape)}"
            )
        if len(set(names)) != len(names) or len(set(frames)) != len(frames):
            raise ValueError(f"camera names {names} and frame ids {frames} must be distinct")
        if not valid_frame_id(self.rig_frame) or not all(valid_frame_id(f) for f in frames):
            raise ValueError(f"frame ids must be non-empty, without spaces or a leading '/': {frames}")
        R = T[:, :3, :3]
        rigid = (
            np.isfinite(T).all()
            and np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() <= RIGID_TOLERANCE
            and (np.linalg.det(R) > 0).all()
            and np.abs(T[:, 3] - (0.0, 0.0, 0.0, 1.0)).max() <= RIGID_TOLERANCE
        )
        if not rigid:
            raise ValueError("cam_from_rig must hold finite rigid transforms (orthonormal R, det +1)")
        T.flags.writeable = False
        object.__setattr__(self, "camera_names", names)
        object.__setattr__(self, "frame_ids", frames)
        object.__setattr__(self, "cam_from_rig", T)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rig):
            return NotImplemented
        return (
            self.rig_frame == other.rig_frame
            and self.camera_names == other.camera_names
            and self.frame_ids == other.frame_ids
            and np.array_equal(self.cam_from_rig, other.cam_from_rig)
        )

    __hash__ = None  # type: ignore[assignment]

    def rig_from_camera(self) -> np.ndarray:
        """The cameras' poses in the rig [V,4,4] float64 (p_rig = T p_cam): cam_from_rig inverted."""
        return invert_rigid(self.cam_from_rig)


def load_rig_file(path: str | Path) -> Rig:
    """The rig of a rig YAML file (module docstring); RigFileError for any mistake in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RigFileError(f"rig file not found: {path}; pass the path of a rig YAML file ({HELP})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RigFileError(f"{path}: cannot read the rig file: {error}") from None
    try:
        spec = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise RigFileError(f"{path}: not valid YAML: {' '.join(problem.split())}{where}") from None
    _mapping(spec, "the file", FILE_KEYS, path)
    rig_frame = spec["rig_frame"]
    if not valid_frame_id(rig_frame):
        raise RigFileError(
            f"{path}: rig_frame must be a frame id (non-empty text without spaces or a leading '/'), "
            f"got {rig_frame!r}"
        )
    cameras = spec["cameras"]
    if not isinstance(cameras, dict) or not cameras:
        raise RigFileError(f"{path}: cameras must map each camera name to its frame_id and rig_from_camera")
    names, frames, poses = [], [], []
    for name, camera in cameras.items():
        if not isinstance(name, str) or not ROS_NAME.fullmatch(name):
            raise RigFileError(
                f"{path}: camera name {name!r} is not a ROS name (letters, digits, '_', '/'-separated, "
                "not starting with a digit)"
            )
        key = f"cameras.{name}"
        _mapping(camera, key, CAMERA_KEYS, path)
        frame_id = camera["frame_id"]
        if not valid_frame_id(frame_id):
            raise RigFileError(
                f"{path}: {key}.frame_id must be the camera's optical frame id (non-empty text without "
                f"spaces or a leading '/'), got {frame_id!r}"
            )
        if frame_id in frames:
            other = names[frames.index(frame_id)]
            raise RigFileError(
                f"{path}: {key}.frame_id {frame_id!r} is also cameras.{other}'s; every camera needs its "
                "own optical frame"
            )
        pose = _pose(camera["rig_from_camera"], f"{key}.rig_from_camera", path)
        if frame_id == rig_frame and np.abs(pose - np.eye(4)).max() > RIGID_TOLERANCE:
            raise RigFileError(
                f"{path}: {key}.frame_id is the rig_frame {rig_frame!r}, so {key}.rig_from_camera must "
                "be the identity (translation [0, 0, 0], rotation_xyzw [0, 0, 0, 1])"
            )
        names.append(name)
        frames.append(frame_id)
        poses.append(pose)
    return Rig(rig_frame, tuple(names), tuple(frames), invert_rigid(np.stack(poses)))


def save_rig_file(rig: Rig, path: str | Path) -> Path:
    """Write `rig` as a rig YAML file (atomically: whole or not at all); returns the path."""
    cameras = {}
    for name, frame_id, T in zip(rig.camera_names, rig.frame_ids, rig.rig_from_camera(), strict=True):
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        q = -q if q[3] < 0 else q
        cameras[name] = {
            "frame_id": frame_id,
            "rig_from_camera": {
                "translation": [float(v) + 0.0 for v in T[:3, 3]],  # + 0.0: no -0.0
                "rotation_xyzw": [float(v) + 0.0 for v in q],
            },
        }
    text = yaml.safe_dump(
        {"rig_frame": rig.rig_frame, "cameras": cameras}, sort_keys=False, default_flow_style=None
    )
    header = (
        "# drone_pose rig file: rig_from_camera is each camera's optical frame in rig_frame\n"
        "# (p_rig = R(rotation_xyzw) p_cam + translation, metres); see docs/fusion.md\n"
    )
    return write_text(path, header + text)


def _mapping(value: Any, key: str, keys: tuple[str, ...], path: Path) -> None:
    """RigFileError unless `value` is a mapping with exactly `keys`."""
    where = "the file" if key == "the file" else key
    if not isinstance(value, dict):
        raise RigFileError(
            f"{path}: {where} must be a mapping with keys {', '.join(keys)}, got {type(value).__name__}"
        )
    prefix = "" if key == "the file" else f"{key}."
    missing = [k for k in keys if k not in value]
    if missing:
        raise RigFileError(f"{path}: missing key {', '.join(prefix + k for k in missing)} ({HELP})")
    unknown = [str(k) for k in value if k not in keys]
    if unknown:
        raise RigFileError(
            f"{path}: unknown key {', '.join(prefix + k for k in unknown)}; {where} takes "
            f"{', '.join(keys)} only"
        )


def _numbers(value: Any, key: str, count: int, unit: str, path: Path) -> np.ndarray:
    """A list of `count` finite numbers; RigFileError otherwise."""
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        hint = ""
        if isinstance(value, list) and any(isinstance(v, str) and _is_number(v) for v in value):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
        raise RigFileError(f"{path}: {key} must be a list of {count} numbers ({unit}), got {value!r}{hint}")
    if not all(math.isfinite(v) for v in value):
        raise RigFileError(f"{path}: {key} must be finite, got {value!r}")
    return np.array(value, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _pose(value: Any, key: str, path: Path) -> np.ndarray:
    """rig_from_camera [4,4] of a {translation, rotation_xyzw} mapping."""
    _mapping(value, key, POSE_KEYS, path)
    t = _numbers(value["translation"], f"{key}.translation", 3, "metres", path)
    q = _numbers(value["rotation_xyzw"], f"{key}.rotation_xyzw", 4, "quaternion x, y, z, w", path)
    norm = float(np.linalg.norm(q))
    if norm == 0.0:
        raise RigFileError(f"{path}: {key}.rotation_xyzw is zero; write a unit quaternion x, y, z, w")
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise RigFileError(
            f"{path}: {key}.rotation_xyzw has norm {norm:.6g}, not 1 (within {QUATERNION_NORM_TOLERANCE:g}); "
            "write a unit quaternion x, y, z, w"
        )
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q / norm).as_matrix()
    T[:3, 3] = t
    return T
