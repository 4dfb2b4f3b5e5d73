"""The tracker as a managed node, QoS overrides, huge images, and `drone-pose launch`, over real DDS."""

from __future__ import annotations

import os
import py_compile
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image

from drone_pose.ros.launch_plan import LaunchArgumentError, multi_camera_plan, tracker_plan

from ..tiny_models import tiny_checkpoint
from .conftest import spin_until
from .test_tracker import start_tracker

REPO_ROOT = Path(__file__).resolve().parents[2]
K = [252.7, 0.0, 160.0, 0.0, 252.7, 120.0, 0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("lifecycle") / "tiny.pt")


def frame(sec: int, width: int = 320, height: int = 240) -> tuple[Image, CameraInfo]:
    image = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    image.data = bytes(width * height * 3)
    info = CameraInfo(width=width, height=height, k=K)
    for message in (image, info):
        message.header.stamp, message.header.frame_id = Time(sec=sec), "camera_optical"
    return image, info


def diagnostics_values(messages: list[DiagnosticArray]) -> dict[str, str]:
    return {kv.key: kv.value for kv in messages[-1].status[0].values} if messages else {}


@pytest.mark.ros
def test_lifecycle_transitions(ros_node, checkpoint):
    """autostart false: unconfigured until configure; poses only while active; cleanup and back."""
    node, executor = ros_node
    poses, diagnostics = [], []
    node.create_subscription(PoseStamped, "/managed/pose", poses.append, QoSProfile(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=20))
    images = node.create_publisher(Image, "/managed/image", QoSProfile(depth=5))
    infos = node.create_publisher(CameraInfo, "/managed/camera_info", QoSProfile(depth=5))
    tracker = start_tracker(checkpoint, "-r", "__ns:=/managed", "-p", "autostart:=false")
    get_state = node.create_client(GetState, "/managed/drone_pose_tracker/get_state")
    change_state = node.create_client(ChangeState, "/managed/drone_pose_tracker/change_state")

    def state() -> int:
        future = get_state.call_async(GetState.Request())
        assert spin_until(executor, future.done, timeout_s=10.0)
        return future.result().current_state.id

    def transition(transition_id: int) -> bool:
        future = change_state.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        assert spin_until(executor, future.done, timeout_s=60.0)
        return future.result().success

    def send_frames(first_sec: int, count: int = 3) -> None:
        for sec in range(first_sec, first_sec + count):
            image, info = frame(sec)
            infos.publish(info)
            images.publish(image)
            spin_until(executor, lambda: False, timeout_s=0.7)

    try:
        assert spin_until(executor, get_state.service_is_ready, timeout_s=60.0), "no lifecycle services"
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert images.get_subscription_count() == 0  # nothing subscribed before activate
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert state() == State.PRIMARY_STATE_ACTIVE
        assert spin_until(executor, lambda: images.get_subscription_count() > 0, timeout_s=20.0)
        spin_until(executor, lambda: False, timeout_s=1.0)  # discovery settles on the tracker's side
        send_frames(1)
        assert spin_until(executor, lambda: len(poses) >= 2, timeout_s=10.0), diagnostics_values(diagnostics)
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert spin_until(executor, lambda: images.get_subscription_count() == 0, timeout_s=20.0)
        while_active = len(poses)
        send_frames(10)
        diagnostics.clear()
        assert spin_until(executor, lambda: len(diagnostics) >= 1, timeout_s=5.0)
        assert len(poses) == while_active  # inactive: no input, no output
        assert diagnostics_values(diagnostics)["lifecycle_state"] == "inactive"
        assert transition(Transition.TRANSITION_CLEANUP)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_CONFIGURE)  # the model loads again
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert spin_until(executor, lambda: images.get_subscription_count() > 0, timeout_s=20.0)
        spin_until(executor, lambda: False, timeout_s=1.0)
        send_frames(20)
        assert spin_until(executor, lambda: len(poses) > while_active, timeout_s=10.0)
        assert tracker.poll() is None
    finally:
        tracker.send_signal(signal.SIGINT)
        _, err = tracker.communicate(timeout=20)
    assert tracker.returncode == 0, err[-2000:]


@pytest.mark.ros
def test_bad_parameters_fail_configure_with_a_clear_message(checkpoint):
    tracker = start_tracker(checkpoint, "-p", "image_transport:=theora")
    _, err = tracker.communicate(timeout=60)
    assert tracker.returncode == 2
    assert "image_transport must be raw or compressed" in err
    missing = start_tracker(checkpoint, "-p", "checkpoint:=/nonexistent/model.pt")
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2
    assert "/nonexistent/model.pt" in err


@pytest.mark.ros
@pytest.mark.parametrize(
    ("parameter", "named"),
    [
        ("input_queue_depth:=-1", "input_queue_depth"),  # refused by its declared range
        ("camera_info_wait_s:=20.0", "camera_info_wait_s"),
        ("max_image_pixels:=0", "max_image_pixels"),
        ("drone:=tello", "'m2ed'"),  # the checkpoint is trained for another drone
    ],
)
def test_start_up_errors_are_one_line_with_exit_2(checkpoint, parameter, named):
    """Every start-up failure: exit 2, the underlying message on one line, no traceback."""
    tracker = start_tracker(checkpoint, "-p", parameter)
    _, err = tracker.communicate(timeout=60)
    assert tracker.returncode == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("tracker_node: ")]
    assert len(lines) == 1, err[-2000:]
    assert named in lines[0], lines


@pytest.mark.ros
def test_a_failed_configure_is_fixed_without_a_restart(ros_node, checkpoint):
    """Configure fails on a missing checkpoint; while unconfigured the parameter can be set and the
    next configure succeeds; once configured, read-at-configure parameters are refused."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    node, executor = ros_node
    tracker = start_tracker(
        checkpoint, "-r", "__ns:=/fixable", "-p", "autostart:=false", "-p", "checkpoint:=/missing/model.pt"
    )
    change_state = node.create_client(ChangeState, "/fixable/drone_pose_tracker/change_state")
    set_parameters = node.create_client(SetParameters, "/fixable/drone_pose_tracker/set_parameters")

    def call(client, request, timeout_s: float = 60.0):
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout_s=timeout_s)
        return future.result()

    def set_checkpoint(path: str) -> bool:
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=path)
        request = SetParameters.Request(parameters=[Parameter(name="checkpoint", value=value)])
        return call(set_parameters, request).results[0].successful

    def configure() -> bool:
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))
        return call(change_state, request).success

    try:
        assert spin_until(executor, change_state.service_is_ready, timeout_s=60.0)
        assert not configure()
        assert set_checkpoint(str(checkpoint))
        assert configure()
        assert not set_checkpoint("/missing/model.pt")  # configured: read at configure, refused
        assert tracker.poll() is None
    finally:
        tracker.send_signal(signal.SIGINT)
        _, err = tracker.communicate(timeout=20)
    assert "/missing/model.pt" in err  # the failed configure said why
    assert tracker.returncode == 0, err[-2000:]


@pytest.mark.ros
def test_qos_override_and_an_8000x8000_image(ros_node, checkpoint):
    """qos_overrides make the image input reliable (so a 192 MB frame arrives whole); the frame is
    rejected as too large and counted, and the next normal frame is processed."""
    node, executor = ros_node
    diagnostics = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=20))
    images = node.create_publisher(Image, "/huge/image", QoSProfile(depth=1))
    infos = node.create_publisher(CameraInfo, "/huge/camera_info", QoSProfile(depth=5))
    tracker = start_tracker(
        checkpoint, "-r", "__ns:=/huge", "-p", "qos_overrides./huge/image.subscription.reliability:=reliable"
    )
    try:
        assert spin_until(executor, lambda: images.get_subscription_count() > 0, timeout_s=60.0)
        qos = node.get_subscriptions_info_by_topic("/huge/image")[0].qos_profile
        assert qos.reliability.name == "RELIABLE"
        spin_until(executor, lambda: False, timeout_s=1.0)
        image, info = frame(1, 8000, 8000)
        infos.publish(info)
        images.publish(image)
        del image
        spin_until(executor, lambda: False, timeout_s=5.0)
        image, info = frame(2)
        infos.publish(info)
        images.publish(image)
        spin_until(executor, lambda: False, timeout_s=3.0)
        diagnostics.clear()
        assert spin_until(executor, lambda: len(diagnostics) >= 1, timeout_s=5.0)
        assert tracker.poll() is None, "the tracker died"
    finally:
        tracker.terminate()
        _, err = tracker.communicate(timeout=20)
    values = diagnostics_values(diagnostics)
    assert int(values.get("rejected_image_too_large", 0)) == 1, f"{values} {err[-2000:]}"
    assert int(values.get("frames_processed", 0)) == 1, values


def test_launch_plans_match_the_launch_arguments():
    plan = tracker_plan(
        {"namespace": "front", "image": "/cam/image_raw", "camera_info": "/cam/info", "checkpoint": "m.pt"}
    )
    (tracker,) = plan.nodes
    args = tracker.ros_arguments()
    assert args[:3] == ["--ros-args", "-r", "__node:=drone_pose_tracker"]
    assert args[3:5] == ["-r", "__ns:=/front"]
    assert args[args.index("--params-file") + 1].endswith("config/tracker.yaml")
    assert {"image:=/cam/image_raw", "camera_info:=/cam/info", "checkpoint:=m.pt"} <= set(args)
    assert plan.environment["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds_shm.xml")
    assert [n.name for n in tracker_plan({"rviz": "true"}).nodes] == ["drone_pose_tracker", "rviz2"]
    multi = multi_camera_plan({"cameras": "left,right", "fusion": "false"})
    assert [n.namespace for n in multi.nodes] == ["left", "right"]
    assert [n.parameters["drone_frame"] for n in multi.nodes] == ["drone_left", "drone_right"]
    assert ("image", "/right/image_raw") in multi.nodes[1].remappings
    with pytest.raises(LaunchArgumentError, match="unknown launch argument"):
        tracker_plan({"camera": "x"})
    with pytest.raises(LaunchArgumentError, match="rviz must be true or false"):
        tracker_plan({"rviz": "yes please"})
    with pytest.raises(LaunchArgumentError, match="listed twice"):
        multi_camera_plan({"cameras": "a,a"})


def test_launch_files_compile_and_load_where_launch_ros_exists():
    files = sorted((REPO_ROOT / "launch").glob("*.launch.py"))
    assert {f.name for f in files} == {"tracker.launch.py", "multi_camera.launch.py"}
    for path in files:
        py_compile.compile(str(path), doraise=True)
    assert (REPO_ROOT / "config" / "rviz" / "drone_pose.rviz").is_file()
    pytest.importorskip("launch_ros")
    import runpy

    for path in files:
        description = runpy.run_path(str(path))["generate_launch_description"]()
        assert description.entities


@pytest.mark.ros
def test_drone_pose_launch_starts_the_trackers(ros_node, checkpoint):
    """`drone-pose launch multi_camera` starts one tracker per camera under its namespace, each
    subscribing to its camera's topics; SIGINT stops them all and the launcher exits 0."""
    node, executor = ros_node
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drone_pose.cli",
            "launch",
            "multi_camera",
            "cameras:=left,right",
            "fusion:=false",
            f"checkpoint:={checkpoint}",
            "device:=cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its trackers can be killed with it, should it hang
    )
    try:
        expected_nodes = {("drone_pose_tracker", "/left"), ("drone_pose_tracker", "/right")}

        def graph_complete() -> bool:
            # Endpoints and node names reach this process through separate discovery traffic
            # (DDS endpoints vs. ros_discovery_info), so wait for every fact, not just the first.
            subscribed = all(node.count_subscribers(f"/{c}/image_raw") > 0 for c in ("left", "right"))
            publishing = all(node.count_publishers(f"/{c}/pose") == 1 for c in ("left", "right"))
            named = expected_nodes <= set(node.get_node_names_and_namespaces())
            return subscribed and publishing and named

        spin_until(executor, graph_complete, timeout_s=90.0)
        assert node.count_subscribers("/left/image_raw") > 0, "the left tracker did not subscribe"
        assert node.count_subscribers("/right/image_raw") > 0, "the right tracker did not subscribe"
        assert expected_nodes <= set(node.get_node_names_and_namespaces())
        assert node.count_publishers("/left/pose") == 1
        assert node.count_publishers("/right/pose") == 1
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            out, _ = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # never leave trackers running into the next tests
            os.killpg(launcher.pid, signal.SIGKILL)
            out, _ = launcher.communicate()
            pytest.fail(f"the launcher did not stop within 60 s of SIGINT: {out[-3000:]}")
    assert launcher.returncode == 0, out[-3000:]
    assert out.count("--params-file") == 2
    assert "drone_pose_tracker exited with status" in out
    assert "Traceback" not in out


@pytest.mark.ros
def test_drone_pose_launch_starts_one_fusion_node_by_default(ros_node, checkpoint):
    """`drone-pose launch multi_camera` without fusion:=false starts one fusion node subscribing
    every camera and publishing /pose; SIGINT stops it and the launcher exits 0."""
    node, executor = ros_node
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drone_pose.cli",
            "launch",
            "multi_camera",
            "cameras:=left,right",
            f"checkpoint:={checkpoint}",
            "device:=cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:

        def graph_complete() -> bool:
            # >= 1: the endpoints of the previous test's trackers may linger in discovery
            subscribed = all(node.count_subscribers(f"/{c}/image_raw") >= 1 for c in ("left", "right"))
            named = ("drone_pose_fusion", "/") in set(node.get_node_names_and_namespaces())
            return subscribed and named and node.count_publishers("/pose") >= 1

        assert spin_until(executor, graph_complete, timeout_s=90.0), "the fusion node did not come up"
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            out, _ = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            out, _ = launcher.communicate()
            pytest.fail(f"the launcher did not stop within 60 s of SIGINT: {out[-3000:]}")
    assert launcher.returncode == 0, out[-3000:]
    assert out.count("--params-file") == 1
    assert "fusion.yaml" in out
    assert "Traceback" not in out


@pytest.mark.ros
def test_a_clock_reset_is_counted_and_tracking_carries_on(ros_node, checkpoint):
    """Stamps that jump back (a looped bag, a restarted driver): the frames after the jump are
    processed, the reset is counted once in /diagnostics; a duplicate stamp is still rejected."""
    node, executor = ros_node
    poses, diagnostics = [], []
    node.create_subscription(PoseStamped, "/looped/pose", poses.append, QoSProfile(depth=50))

    def ours(message: DiagnosticArray) -> None:  # other tests' trackers may still be winding down
        if message.status and message.status[0].hardware_id == "/looped/drone_pose_tracker":
            diagnostics.append(message)

    node.create_subscription(DiagnosticArray, "/diagnostics", ours, QoSProfile(depth=20))
    images = node.create_publisher(Image, "/looped/image", QoSProfile(depth=5))
    infos = node.create_publisher(CameraInfo, "/looped/camera_info", QoSProfile(depth=5))
    tracker = start_tracker(checkpoint, "-r", "__ns:=/looped")
    try:
        ready = lambda: images.get_subscription_count() > 0 and infos.get_subscription_count() > 0  # noqa: E731
        assert spin_until(executor, ready, timeout_s=60.0)
        spin_until(executor, lambda: False, timeout_s=1.0)
        for sec in (10, 11, 12, 12, 2, 3, 4):  # a duplicate, then the clock starts again
            image, info = frame(sec)
            infos.publish(info)
            images.publish(image)
            spin_until(executor, lambda: False, timeout_s=0.7)
        stamps = lambda: {pose.header.stamp.sec for pose in poses}  # noqa: E731
        assert spin_until(executor, lambda: {3, 4} <= stamps(), timeout_s=10.0), stamps()
        diagnostics.clear()
        assert spin_until(executor, lambda: len(diagnostics) >= 1, timeout_s=5.0)
        values = diagnostics_values(diagnostics)
    finally:
        tracker.send_signal(signal.SIGINT)
        _, err = tracker.communicate(timeout=20)
    assert int(values.get("clock_resets", 0)) == 1, values
    assert int(values.get("rejected_stamp_not_increasing", 0)) == 1, values
    assert "clock reset" in err.lower(), err[-2000:]
    assert tracker.returncode == 0, err[-2000:]


@pytest.mark.ros
def test_ctrl_c_under_load_logs_no_errors(ros_node, checkpoint):
    """SIGINT while frames flow and the worker estimates: exit 0, nothing logged as an error."""
    node, executor = ros_node
    poses = []
    node.create_subscription(PoseStamped, "/loaded/pose", poses.append, QoSProfile(depth=50))
    images = node.create_publisher(Image, "/loaded/image", QoSProfile(depth=5))
    infos = node.create_publisher(CameraInfo, "/loaded/camera_info", QoSProfile(depth=5))
    tracker = start_tracker(checkpoint, "-r", "__ns:=/loaded")
    interrupted = False
    try:
        ready = lambda: images.get_subscription_count() > 0 and infos.get_subscription_count() > 0  # noqa: E731
        assert spin_until(executor, ready, timeout_s=60.0)
        spin_until(executor, lambda: False, timeout_s=1.0)
        sec = 1
        while not poses and sec < 200:
            image, info = frame(sec)
            infos.publish(info)
            images.publish(image)
            spin_until(executor, lambda: False, timeout_s=0.05)
            sec += 1
        assert poses, "no pose before the interrupt"
        for _ in range(5):  # still flowing when the signal arrives
            image, info = frame(sec)
            infos.publish(info)
            images.publish(image)
            sec += 1
        tracker.send_signal(signal.SIGINT)
        interrupted = True
        for _ in range(20):
            image, info = frame(sec)
            infos.publish(info)
            images.publish(image)
            spin_until(executor, lambda: False, timeout_s=0.02)
            sec += 1
    finally:
        if not interrupted:
            tracker.send_signal(signal.SIGINT)
        _, err = tracker.communicate(timeout=30)
    assert tracker.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "[ERROR]" not in err, err[-2000:]
