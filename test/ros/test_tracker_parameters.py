"""The tracker's parameter table: declared once, and the shipped params file and launch plan agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drone_pose.inference.thresholds import EstimatorThresholds
from drone_pose.ros.launch_plan import MULTI_CAMERA_ARGUMENTS, TRACKER_ARGUMENTS, tracker_plan
from drone_pose.ros.tracker_parameters import (
    PARAMETERS_BY_NAME,
    THRESHOLD_PARAMETERS,
    TRACKER_PARAMETERS,
    parameter_default,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_tracker_yaml_lists_exactly_the_table_with_its_defaults():
    document = yaml.safe_load((REPO_ROOT / "config" / "tracker.yaml").read_text())
    listed = document["/**"]["ros__parameters"]
    assert list(listed) == [spec.name for spec in TRACKER_PARAMETERS]
    for spec in TRACKER_PARAMETERS:
        assert listed[spec.name] == spec.default, spec.name
        assert type(listed[spec.name]) is type(spec.default), f"{spec.name}: rclpy refuses another type"


def test_threshold_defaults_are_the_estimators():
    defaults = EstimatorThresholds()
    assert set(THRESHOLD_PARAMETERS) == {
        "min_keypoint_confidence",
        "keypoint_confidence_power",
        "max_reprojection_rms_px",
        "max_position_std_m",
    }
    for name in THRESHOLD_PARAMETERS:
        assert parameter_default(name) == getattr(defaults, name)
        assert PARAMETERS_BY_NAME[name].runtime


def test_launch_defaults_come_from_the_table():
    for name in ("checkpoint", "device", "drone_frame", "image_transport"):
        assert TRACKER_ARGUMENTS[name] == str(parameter_default(name))
    for name in ("checkpoint", "device"):
        assert MULTI_CAMERA_ARGUMENTS[name] == str(parameter_default(name))
    (node,) = tracker_plan().nodes
    assert node.name == "drone_pose_tracker"
    assert node.parameters["device"] == parameter_default("device")


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("max_reprojection_rms_px", 3.5, False),
        ("max_reprojection_rms_px", 0.0, True),
        ("max_reprojection_rms_px", -1.0, True),
        ("max_reprojection_rms_px", float("nan"), True),
        ("max_position_std_m", float("inf"), True),
        ("keypoint_confidence_power", 0.0, False),
        ("keypoint_confidence_power", 17.0, True),
        ("min_keypoint_confidence", -0.5, False),
        ("zoom_pass", False, False),
        ("checkpoint", "/elsewhere.pt", True),
        ("drone_frame", "quadrotor", True),  # read once at start: refused rather than ignored
        ("input_queue_depth", 3, True),
    ],
)
def test_run_time_changes_are_validated_by_the_table(name, value, refused):
    reason = PARAMETERS_BY_NAME[name].refusal(value)
    assert (reason is not None) == refused
    if refused:
        assert name in reason


def test_every_parameter_is_described_and_ranges_are_ordered():
    for spec in TRACKER_PARAMETERS:
        assert spec.description
        if spec.range is not None:
            assert isinstance(spec.default, int | float)
            assert not isinstance(spec.default, bool)
            assert all(type(bound) is type(spec.default) for bound in spec.range)
            assert spec.range[0] <= spec.default <= spec.range[1]


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("checkpoint", "/elsewhere.pt", False),  # unconfigured: fix it, then configure again
        ("drone", "tello", False),
        ("input_queue_depth", 0, True),
        ("input_queue_depth", -1, True),
        ("output_queue_depth", 1, False),
        ("max_image_pixels", 0, True),
        ("max_image_pixels", 640 * 480, False),
        ("max_reprojection_rms_px", 0.0, True),
    ],
)
def test_read_at_configure_parameters_change_only_while_unconfigured(name, value, refused):
    spec = PARAMETERS_BY_NAME[name]
    assert (spec.refusal(value, configured=False) is not None) == refused
    if not spec.runtime:
        assert "read at configure" in spec.refusal(value, configured=True)
