"""The fusion node's parameters: the tracker's shared ones by name, plus the rig's and the grouping's.

Same table form and rules as drone_pose.ros.tracker_parameters (ParameterSpec), so the node, the
launch plan, `config/fusion.yaml` and docs/fusion_node.md read one list. Neither rclpy nor torch is
imported here.
"""

from __future__ import annotations

import re

from drone_pose.ros.tracker_parameters import PARAMETERS_BY_NAME as TRACKER_PARAMETERS_BY_NAME
from drone_pose.ros.tracker_parameters import ParameterSpec

FUSION_NODE_NAME = "drone_pose_fusion"
DEFAULT_CAMERAS = "camera0,camera1"
DEFAULT_GATE_MAHALANOBIS = 5.0  # FusedEstimator's (not imported: it needs torch)
# Where the extrinsics come from ("": rig_file when it is given, else tf).
EXTRINSICS_SOURCES = ("", "tf", "rig_file", "estimate")
RIG_POLICIES = ("reservoir", "window")
# One camera name: a relative ROS name (its topics are <camera>/<image_suffix> and <camera>/camera_info).
CAMERA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")

_SHARED = (
    "checkpoint",
    "drone",
    "device",
    "min_keypoint_confidence",
    "keypoint_confidence_power",
    "max_reprojection_rms_px",
    "max_position_std_m",
    "zoom_pass",
    "flip_test",
    "input_queue_depth",
    "output_queue_depth",
    "camera_info_wait_s",
    "image_transport",
    "max_image_pixels",
    "autostart",
)

FUSION_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "cameras",
        DEFAULT_CAMERAS,
        "comma-separated camera names: topics <camera>/<image_suffix> and <camera>/camera_info",
    ),
    ParameterSpec(
        "image_suffix", "image_raw", "image topic under each camera (compressed: <suffix>/compressed)"
    ),
    ParameterSpec(
        "extrinsics",
        "",
        "where the cameras' extrinsics come from: tf (/tf, /tf_static), rig_file, or estimate (the rig "
        "calibrates itself from the drone); empty: rig_file when rig_file is given, else tf",
    ),
    ParameterSpec(
        "rig_frame",
        "",
        "frame of the fused pose; empty: the rig file's rig_frame, `world` with extrinsics from TF, or the "
        "reference camera's optical frame when estimated (a name given there is anchored to that camera)",
    ),
    ParameterSpec(
        "rig_file",
        "",
        "rig YAML with every camera's extrinsics (docs/fusion.md#rig-files); empty: from /tf and /tf_static",
    ),
    ParameterSpec(
        "rig_reference", "", "extrinsics estimate: the camera the rig is anchored to; empty: the first camera"
    ),
    ParameterSpec(
        "rig_min_groups",
        30,
        "extrinsics estimate: groups with two usable views before the first rig estimate",
        (3, 1_000_000),
    ),
    ParameterSpec(
        "rig_estimate_period_s",
        5.0,
        "extrinsics estimate: seconds between rig estimates (on a thread of their own; only when new "
        "groups came)",
        (0.01, 3600.0),
    ),
    ParameterSpec(
        "rig_capacity",
        3000,
        "extrinsics estimate: groups kept for the estimate (about 1.2 kB each with 3 cameras)",
        (10, 1_000_000),
    ),
    ParameterSpec(
        "rig_policy",
        "reservoir",
        "extrinsics estimate: once rig_capacity is reached keep a uniform sample of all groups "
        "(reservoir, a fixed rig) or the latest (window, a rig that may move)",
    ),
    ParameterSpec(
        "rig_output_file",
        "",
        "extrinsics estimate: write the rig here (atomically; a rig file rig_file can read) now and "
        "after every estimate, once every camera is resolved; empty: not written",
        runtime=True,
    ),
    ParameterSpec("drone_frame", "drone", "child frame of the published TF (parent: rig_frame)"),
    ParameterSpec("publish_tf", True, "publish rig_frame -> drone_frame on /tf"),
    ParameterSpec(
        "sync_slop_s",
        0.0167,
        "frames of different cameras within this of a group's stamp are one group (s; half a 30 Hz period)",
        (0.0, 10.0),
    ),
    ParameterSpec(
        "max_wait_s",
        0.1,
        "a group is fused with the views that came once this has passed since its first frame (s)",
        (0.0, 10.0),
        positive=True,
    ),
    ParameterSpec(
        "gate_mahalanobis",
        DEFAULT_GATE_MAHALANOBIS,
        "a view whose own pose is farther than this (Mahalanobis distance) from the others' is left out",
        (0.0, 1.0e6),
        positive=True,
        runtime=True,
    ),
    *(TRACKER_PARAMETERS_BY_NAME[name] for name in _SHARED),
)
FUSION_PARAMETERS_BY_NAME: dict[str, ParameterSpec] = {spec.name: spec for spec in FUSION_PARAMETERS}


def camera_names(text: str) -> tuple[str, ...]:
    """The camera names of the `cameras` parameter ("a, b,c" -> ("a", "b", "c")); ValueError (one
    line) when none is given, one is not a relative ROS name, or one repeats."""
    names = tuple(name.strip() for name in str(text).split(",") if name.strip())
    if not names:
        raise ValueError("cameras is empty: name the cameras, e.g. cameras:=camera0,camera1,camera2")
    bad = [name for name in names if not CAMERA_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"cameras: {bad[0]!r} is not a relative ROS name (letters, digits, _ and /)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"cameras: {repeated[0]!r} is listed twice")
    return names


def fusion_parameter_default(name: str) -> bool | int | float | str:
    """The table's default of parameter `name` (KeyError for an unknown one)."""
    return FUSION_PARAMETERS_BY_NAME[name].default
