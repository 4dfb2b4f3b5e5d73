"""The fusion node's parameter table, its params file, its reference page and its launch plan agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drone_pose.fusion.fused_estimator import DEFAULT_GATE_MAHALANOBIS
from drone_pose.ros.fusion_parameters import (
    DEFAULT_GATE_MAHALANOBIS as PARAMETER_GATE,
)
from drone_pose.ros.fusion_parameters import (
    FUSION_PARAMETERS,
    FUSION_PARAMETERS_BY_NAME,
    camera_names,
    fusion_parameter_default,
)
from drone_pose.ros.launch_plan import MULTI_CAMERA_ARGUMENTS, LaunchArgumentError, multi_camera_plan
from drone_pose.ros.tracker_parameters import PARAMETERS_BY_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_fusion_yaml_lists_exactly_the_table_with_its_defaults():
    document = yaml.safe_load((REPO_ROOT / "config" / "fusion.yaml").read_text())
    listed = document["/**"]["ros__parameters"]
    assert list(listed) == [spec.name for spec in FUSION_PARAMETERS]
    for spec in FUSION_PARAMETERS:
        assert listed[spec.name] == spec.default, spec.name
        assert type(listed[spec.name]) is type(spec.default), f"{spec.name}: rclpy refuses another type"


def test_shared_parameters_are_the_trackers_and_the_gate_is_the_estimators():
    shared = set(FUSION_PARAMETERS_BY_NAME) & set(PARAMETERS_BY_NAME) - {"drone_frame", "publish_tf"}
    assert {"checkpoint", "device", "max_position_std_m", "zoom_pass", "autostart"} <= shared
    for name in shared:
        assert FUSION_PARAMETERS_BY_NAME[name] is PARAMETERS_BY_NAME[name], name
    assert PARAMETER_GATE == DEFAULT_GATE_MAHALANOBIS
    assert FUSION_PARAMETERS_BY_NAME["gate_mahalanobis"].runtime
    assert FUSION_PARAMETERS_BY_NAME["gate_mahalanobis"].refusal(0.0) is not None
    assert FUSION_PARAMETERS_BY_NAME["cameras"].refusal("a,b") is not None  # read at configure


def test_camera_names_parse_and_refuse_with_one_line():
    assert camera_names(" left, right ,rear") == ("left", "right", "rear")
    assert camera_names("rig/left,rig/right") == ("rig/left", "rig/right")
    for text, message in [
        ("", "empty"),
        (" , ", "empty"),
        ("left,left", "twice"),
        ("left,1st", "not a relative ROS name"),
        ("/left", "not a relative ROS name"),
        ("left cam", "not a relative ROS name"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            camera_names(text)
        assert "\n" not in str(error.value)


def test_multi_camera_launch_starts_one_fusion_node_by_default_and_trackers_without_fusion():
    (fusion,) = multi_camera_plan({"cameras": "camera0,camera1,camera2", "rig_file": "/tmp/rig.yaml"}).nodes
    assert fusion.name == "drone_pose_fusion"
    assert fusion.module == "drone_pose.ros.fusion_node"
    assert fusion.parameters["cameras"] == "camera0,camera1,camera2"
    assert fusion.parameters["rig_file"] == "/tmp/rig.yaml"
    assert "rig_frame" not in fusion.parameters  # empty: the node's default decides
    assert fusion.params_files[0].endswith("config/fusion.yaml")
    command = fusion.command()
    assert command[command.index("--params-file") + 1].endswith("fusion.yaml")
    trackers = multi_camera_plan({"cameras": "camera0,camera1,camera2", "fusion": "false"}).nodes
    assert [node.namespace for node in trackers] == ["camera0", "camera1", "camera2"]
    assert {node.name for node in trackers} == {"drone_pose_tracker"}
    rviz = multi_camera_plan({"rviz": "true"}).nodes[-1]
    assert rviz.arguments[-1].endswith("rviz/fusion.rviz")
    assert (REPO_ROOT / "config" / "rviz" / "fusion.rviz").is_file()
    assert MULTI_CAMERA_ARGUMENTS["cameras"] == fusion_parameter_default("cameras")


@pytest.mark.parametrize(
    "given", [{"fusion": "maybe"}, {"cameras": "a,a"}, {"cameras": ""}, {"cameras": "a,2b"}]
)
def test_multi_camera_launch_refuses_bad_arguments(given):
    with pytest.raises(LaunchArgumentError):
        multi_camera_plan(given)
