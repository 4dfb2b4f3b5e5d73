"""The processes a drone_pose launch starts, described once for `ros2 launch` and `drone-pose launch`.

`launch/tracker.launch.py` and `launch/multi_camera.launch.py` turn these descriptions into
launch_ros Node actions; `drone-pose launch` (drone_pose.ros.launcher) starts the same processes
with the same `--ros-args` (node name, namespace, params file, parameters, remaps) where
`ros2 launch` is not installed. Neither rclpy nor launch is imported here.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from drone_pose.errors import UserError
from drone_pose.resources import config_dir
from drone_pose.ros.fusion_parameters import FUSION_NODE_NAME, camera_names, fusion_parameter_default
from drone_pose.ros.tracker_parameters import TRACKER_NODE_NAME, parameter_default

TRACKER_EXECUTABLE = "tracker_node"
TRACKER_MODULE = "drone_pose.ros.tracker_node"
FUSION_EXECUTABLE = "fusion_node"
FUSION_MODULE = "drone_pose.ros.fusion_node"
BOOLEAN_ARGUMENTS = ("rviz", "use_sim_time", "fusion")


class LaunchArgumentError(UserError):
    """A launch argument that is unknown or has an unusable value."""


@dataclass(frozen=True)
class NodeLaunch:
    """One process: package/executable (or a Python module), name, namespace, ROS arguments."""

    name: str
    executable: str
    package: str = "drone_pose"
    module: str | None = None  # run as `python -m module` where the executable is not installed
    namespace: str = ""
    params_files: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()  # plain command-line arguments before --ros-args

    def ros_arguments(self) -> list[str]:
        """`--ros-args ...` exactly as launch_ros builds them for this node."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={_absolute(self.namespace)}"]
        for params_file in self.params_files:
            args += ["--params-file", params_file]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_parameter_text(value)}"]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args

    def command(self) -> list[str]:
        """The command line: the module under this interpreter when set, else the executable."""
        program = [sys.executable, "-m", self.module] if self.module else [self.executable]
        return [*program, *self.arguments, *self.ros_arguments()]


@dataclass(frozen=True)
class LaunchPlan:
    """The processes of one launch plus the environment they share."""

    nodes: tuple[NodeLaunch, ...]
    environment: dict[str, str]


TRACKER_ARGUMENTS: dict[str, str] = {
    "namespace": "",
    "image": "image",
    "camera_info": "camera_info",
    "checkpoint": str(parameter_default("checkpoint")),
    "device": str(parameter_default("device")),
    "drone_frame": str(parameter_default("drone_frame")),
    "image_transport": str(parameter_default("image_transport")),
    "params_file": "",
    "rviz": "false",
    "use_sim_time": "false",
}
MULTI_CAMERA_ARGUMENTS: dict[str, str] = {
    "cameras": str(fusion_parameter_default("cameras")),
    "image_suffix": str(fusion_parameter_default("image_suffix")),
    "fusion": "true",
    "rig_frame": str(fusion_parameter_default("rig_frame")),
    "rig_file": str(fusion_parameter_default("rig_file")),
    "drone_frame": str(fusion_parameter_default("drone_frame")),
    "checkpoint": str(parameter_default("checkpoint")),
    "device": str(parameter_default("device")),
    "params_file": "",
    "rviz": "false",
    "use_sim_time": "false",
}


def resolve_arguments(given: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    """Defaults updated by `given`; LaunchArgumentError on an unknown name or a bad boolean."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise LaunchArgumentError(f"unknown launch argument(s) {unknown}; known: {', '.join(defaults)}")
    resolved = {**defaults, **given}
    for key in BOOLEAN_ARGUMENTS:
        if key in resolved and resolved[key].lower() not in ("true", "false"):
            raise LaunchArgumentError(f"{key} must be true or false, got {resolved[key]!r}")
    return resolved


def default_params_file() -> str:
    return str(config_dir() / "tracker.yaml")


def fastdds_profile() -> str:
    return str(config_dir() / "fastdds_shm.xml")


def fusion_params_file() -> str:
    return str(config_dir() / "fusion.yaml")


def rviz_config(name: str = "drone_pose") -> str:
    return str(config_dir() / "rviz" / f"{name}.rviz")


def tracker_node(
    arguments: dict[str, str], namespace: str, image: str, camera_info: str, drone_frame: str
) -> NodeLaunch:
    parameters: dict[str, Any] = {
        "use_sim_time": arguments["use_sim_time"].lower() == "true",
        "device": arguments["device"],
        "drone_frame": drone_frame,
    }
    if arguments.get("checkpoint"):
        parameters["checkpoint"] = arguments["checkpoint"]
    if arguments.get("image_transport", parameter_default("image_transport")) != "raw":
        parameters["image_transport"] = arguments["image_transport"]
    remappings = [("image", image), ("camera_info", camera_info)]
    if arguments.get("image_transport") == "compressed":
        remappings[0] = ("image/compressed", f"{image}/compressed")
    return NodeLaunch(
        name=TRACKER_NODE_NAME,
        executable=TRACKER_EXECUTABLE,
        module=TRACKER_MODULE,
        namespace=namespace,
        params_files=(arguments.get("params_file") or default_params_file(),),
        parameters=parameters,
        remappings=tuple(remappings),
    )


def rviz_node(use_sim_time: bool, config: str = "drone_pose") -> NodeLaunch:
    return NodeLaunch(
        name="rviz2",
        package="rviz2",
        executable="rviz2",
        parameters={"use_sim_time": use_sim_time},
        arguments=("-d", rviz_config(config)),
    )


def tracker_plan(given: dict[str, str] | None = None) -> LaunchPlan:
    """One tracker (tracker.launch.py): image/camera_info remapped, tracker.yaml loaded."""
    arguments = resolve_arguments(given or {}, TRACKER_ARGUMENTS)
    nodes = [
        tracker_node(
            arguments,
            arguments["namespace"],
            arguments["image"],
            arguments["camera_info"],
            arguments["drone_frame"],
        )
    ]
    if arguments["rviz"].lower() == "true":
        nodes.append(rviz_node(arguments["use_sim_time"].lower() == "true"))
    return LaunchPlan(tuple(nodes), {"FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile()})


def multi_camera_plan(given: dict[str, str] | None = None) -> LaunchPlan:
    """multi_camera.launch.py: with fusion:=true (default) one fusion node for all cameras,
    publishing one pose in the rig frame; with fusion:=false one tracker per camera, each in the
    camera's namespace publishing TF to drone_<camera> (a frame has a single parent). Both read
    /<camera>/<image_suffix> and /<camera>/camera_info."""
    arguments = resolve_arguments(given or {}, MULTI_CAMERA_ARGUMENTS)
    try:
        cameras = camera_names(",".join(name.strip().strip("/") for name in arguments["cameras"].split(",")))
    except ValueError as error:
        raise LaunchArgumentError(str(error)) from None
    fusion = arguments["fusion"].lower() == "true"
    if fusion:
        nodes = [fusion_node(arguments, cameras)]
    else:
        nodes = [
            tracker_node(
                arguments,
                camera,
                f"/{camera}/{arguments['image_suffix']}",
                f"/{camera}/camera_info",
                f"drone_{camera}",
            )
            for camera in cameras
        ]
    if arguments["rviz"].lower() == "true":
        nodes.append(
            rviz_node(arguments["use_sim_time"].lower() == "true", "fusion" if fusion else "drone_pose")
        )
    return LaunchPlan(tuple(nodes), {"FASTDDS_DEFAULT_PROFILES_FILE": fastdds_profile()})


def fusion_node(arguments: dict[str, str], cameras: tuple[str, ...]) -> NodeLaunch:
    """The fusion node for `cameras` (absolute topics /<camera>/...), fusion.yaml loaded."""
    parameters: dict[str, Any] = {
        "use_sim_time": arguments["use_sim_time"].lower() == "true",
        "device": arguments["device"],
        "cameras": ",".join(cameras),
        "image_suffix": arguments["image_suffix"],
        "drone_frame": arguments["drone_frame"],
    }
    for key in ("checkpoint", "rig_frame", "rig_file"):
        if arguments.get(key):
            parameters[key] = arguments[key]
    return NodeLaunch(
        name=FUSION_NODE_NAME,
        executable=FUSION_EXECUTABLE,
        module=FUSION_MODULE,
        params_files=(arguments.get("params_file") or fusion_params_file(),),
        parameters=parameters,
    )


PLANS = {"tracker": tracker_plan, "multi_camera": multi_camera_plan}


def executable_available(node: NodeLaunch) -> bool:
    """Whether this machine can start the node (a module under this interpreter, or on PATH)."""
    return node.module is not None or shutil.which(node.executable) is not None


def parse_launch_arguments(items: list[str]) -> dict[str, str]:
    """`name:=value` items (ros2 launch syntax) -> dict; LaunchArgumentError on anything else."""
    parsed = {}
    for item in items:
        name, separator, value = item.partition(":=")
        if not separator or not name:
            raise LaunchArgumentError(f"launch arguments are name:=value, got {item!r}")
        parsed[name] = value
    return parsed


def _absolute(namespace: str) -> str:
    return namespace if namespace.startswith("/") else f"/{namespace}"


def _parameter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
