"""The tracker node's parameters, declared once: name, default, description, range, run-time change.

The node declares its parameters from this table and validates run-time changes with it; the
launch plan takes its defaults from it; `config/tracker.yaml` and docs/tracker_node.md are tested
against it. Threshold defaults are EstimatorThresholds' own. Neither rclpy nor torch is imported
here, so the launch plan can read the table cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from drone_pose.inference.thresholds import EstimatorThresholds

ParameterValue = bool | int | float | str
TRACKER_NODE_NAME = "drone_pose_tracker"


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    default: its value and type (rclpy refuses a value of another type); range: the closed range
    rclpy enforces (floating-point or integer, as the default), None for none; positive: also > 0;
    runtime: may change while the node runs. The others are read at configure: they may change
    while the node is unconfigured (before configure, after cleanup or a failed configure) and are
    refused while it is configured.
    """

    name: str
    default: ParameterValue
    description: str
    range: tuple[float, float] | tuple[int, int] | None = None
    positive: bool = False
    runtime: bool = False

    def refusal(self, value: ParameterValue, configured: bool = True) -> str | None:
        """Why `value` is refused for this parameter, or None when it is accepted; `configured`:
        the node holds a configuration (inactive or active), so read-at-configure ones are refused.

        The range check repeats what rclpy enforces from the declared range before the node's
        callback runs, so that the table alone decides for callers without rclpy (tests, a second
        node's own validation)."""
        if not self.runtime and configured:
            return f"{self.name} is read at configure: cleanup the node (or restart it) to change it"
        integer = isinstance(self.default, int) and not isinstance(self.default, bool)
        if integer and self.range is not None and not self.range[0] <= int(value) <= self.range[1]:
            return f"{self.name}: {value} is outside [{self.range[0]}, {self.range[1]}]"
        if isinstance(self.default, float):
            number = float(value)
            if not math.isfinite(number):
                return f"{self.name}: bad value {number}"
            if self.range is not None and not self.range[0] <= number <= self.range[1]:
                return f"{self.name}: {number} is outside [{self.range[0]}, {self.range[1]}]"
            if self.positive and number <= 0:
                return f"{self.name}: bad value {number}, must be > 0"
        return None


_THRESHOLDS = EstimatorThresholds()

TRACKER_PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("checkpoint", "", "drone_pose checkpoint (.pt); empty: the shipped one for `drone`"),
    ParameterSpec(
        "drone",
        "",
        "the checkpoint's drone (refused when they differ); empty: the checkpoint's, or m2ed's "
        "shipped checkpoint when `checkpoint` is empty too",
    ),
    ParameterSpec("device", "auto", "auto (CUDA when available), cpu, cuda or cuda:N"),
    ParameterSpec("drone_frame", "drone", "child frame of the published TF (parent: the image's frame_id)"),
    ParameterSpec("publish_tf", True, "publish image frame -> drone_frame on /tf"),
    ParameterSpec(
        "min_keypoint_confidence",
        _THRESHOLDS.min_keypoint_confidence,
        "heatmap peak below which a keypoint is ignored (negative: keep all)",
        range=(-1.0, 1.0),
        runtime=True,
    ),
    ParameterSpec(
        "keypoint_confidence_power",
        _THRESHOLDS.keypoint_confidence_power,
        "PnP weighs a keypoint by (its heatmap peak / the best one) ** this (0: equally)",
        range=(0.0, 16.0),
        runtime=True,
    ),
    ParameterSpec(
        "max_reprojection_rms_px",
        _THRESHOLDS.max_reprojection_rms_px,
        "reject poses whose keypoint RMS reprojection error (px) exceeds this",
        range=(0.0, 1.0e6),
        positive=True,
        runtime=True,
    ),
    ParameterSpec(
        "max_position_std_m",
        _THRESHOLDS.max_position_std_m,
        "reject poses whose calibrated position standard deviation (sqrt trace, m) exceeds this",
        range=(0.0, 1.0e6),
        positive=True,
        runtime=True,
    ),
    ParameterSpec(
        "zoom_pass",
        True,
        "zoomed second network pass for small drones when the checkpoint was trained for it",
        runtime=True,
    ),
    ParameterSpec(
        "flip_test",
        True,
        "average heatmaps with the mirrored image's where the checkpoint asks for it",
        runtime=True,
    ),
    ParameterSpec(
        "input_queue_depth", 5, "QoS depth of image and camera_info (best effort, volatile)", (1, 1000)
    ),
    ParameterSpec(
        "output_queue_depth", 10, "QoS depth of pose, pose_with_covariance and marker (reliable)", (1, 1000)
    ),
    ParameterSpec(
        "camera_info_wait_s", 0.1, "how long an image waits for the CameraInfo of its stamp (s)", (0.0, 10.0)
    ),
    ParameterSpec(
        "image_transport", "raw", "raw (sensor_msgs/Image on `image`) or compressed (`image/compressed`)"
    ),
    ParameterSpec(
        "max_image_pixels",
        50_000_000,
        "larger images are rejected (image_too_large) before any copy or decode",
        (1, 1_000_000_000),
    ),
    ParameterSpec("autostart", True, "configure and activate at start (false: wait for lifecycle calls)"),
)
PARAMETERS_BY_NAME: dict[str, ParameterSpec] = {spec.name: spec for spec in TRACKER_PARAMETERS}
# run-time parameters that are EstimatorThresholds fields of the same name
THRESHOLD_PARAMETERS: tuple[str, ...] = tuple(
    spec.name for spec in TRACKER_PARAMETERS if spec.name in {f.name for f in fields(EstimatorThresholds)}
)


def parameter_default(name: str) -> ParameterValue:
    """The table's default of parameter `name` (KeyError for an unknown one)."""
    return PARAMETERS_BY_NAME[name].default
