"""The tracker node over real DDS: a replayed synthetic flight bag in, poses, covariance, TF and
diagnostics out, each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.qos import QoSProfile
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker

from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.drones import load_drone
from drone_pose.ros.qos import TF_TOPIC, sensor_data_qos, tf_qos
from drone_pose.ros.tracker_node import INPUT_REJECTIONS

from ..tiny_models import tiny_checkpoint
from .conftest import spin_until

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def flight(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracker")
    bag = root / "flight"
    write_flight_bag(
        bag, FlightBagSpec(drone="m2ed", seconds=2.0, rate_hz=10.0, seed=1), workers=1, progress=False
    )
    checkpoint = tiny_checkpoint(root / "tiny.pt")  # untrained but fixed: the test is about plumbing
    with Reader(bag) as reader:
        stamps = sorted(t for c, t, _ in reader.messages() if c.topic == "/camera/image_raw")
    return bag, checkpoint, stamps


def start(*command: str) -> subprocess.Popen:
    return subprocess.Popen([*command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_tracker(checkpoint, *ros_arguments: str) -> subprocess.Popen:
    """The tracker on CPU, accepting every pose of the untrained test network (no thresholds, and
    equal PnP weights: its heatmap peaks say nothing)."""
    parameters = [
        f"checkpoint:={checkpoint}",
        "device:=cpu",
        "max_reprojection_rms_px:=1000000.0",
        "max_position_std_m:=1000000.0",
        "min_keypoint_confidence:=-1.0",
        "keypoint_confidence_power:=0.0",
    ]
    arguments = [item for p in parameters for item in ("-p", p)]
    return start(
        sys.executable, "-m", "drone_pose.ros.tracker_node", "--ros-args", *arguments, *ros_arguments
    )


def test_replayed_flight_gives_stamped_poses_covariance_tf_and_diagnostics(ros_node, flight):
    node, executor = ros_node
    bag, checkpoint, image_stamps = flight
    poses, covariances, transforms, diagnostics = [], [], [], []
    node.create_subscription(PoseStamped, "/pose", poses.append, QoSProfile(depth=50))
    node.create_subscription(
        PoseWithCovarianceStamped, "/pose_with_covariance", covariances.append, QoSProfile(depth=50)
    )
    node.create_subscription(TFMessage, TF_TOPIC, transforms.append, tf_qos())
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=10))
    markers, overlays = [], []
    node.create_subscription(Marker, "/marker", markers.append, QoSProfile(depth=50))
    node.create_subscription(Image, "/overlay", overlays.append, sensor_data_qos(20))
    tracker = start_tracker(
        checkpoint, "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info"
    )
    try:
        # poses are reliable but volatile: ones sent before this node has discovered the tracker's
        # publishers never reach it, so the flight starts only once they are discovered
        outputs = ("/pose", "/pose_with_covariance", "/marker")
        assert spin_until(
            executor, lambda: all(node.count_publishers(topic) > 0 for topic in outputs), timeout_s=60.0
        ), "the tracker's outputs were not discovered"
        replay = start(
            sys.executable,
            "-m",
            "drone_pose.cli",
            "replay",
            str(bag),
            "--wait-for",
            "/camera/image_raw",
            "--wait-timeout",
            "60",
            "--rate",
            "0.5",  # 5 Hz: headroom for a slow shared CPU (the tiny network took p50 160-210 ms on one)
        )
        assert spin_until(executor, lambda: replay.poll() is not None, timeout_s=90.0), (
            "replay did not finish"
        )
        out, err = replay.communicate(timeout=10)
        assert replay.returncode == 0, err[-2000:]
        assert '"/camera/image_raw": 20' in out

        def settled() -> bool:
            """Diagnostics account for all 20 images and every pose they count has arrived."""
            if not diagnostics:
                return False
            values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
            handled = int(values.get("frames_processed", 0)) + int(values.get("frames_dropped", 0))
            handled += sum(int(values.get(f"rejected_{reason}", 0)) for reason in INPUT_REJECTIONS)
            return handled == 20 and 0 < int(values.get("poses_published", 0)) <= len(poses)

        spin_until(executor, settled, timeout_s=30.0)
        seen = len(diagnostics)  # one more report (1 Hz): final counts; markers and TF arrive meanwhile
        spin_until(executor, lambda: len(diagnostics) > seen, timeout_s=3.0)
    finally:
        tracker.terminate()
        _, tracker_err = tracker.communicate(timeout=20)
    last = {kv.key: kv.value for kv in diagnostics[-1].status[0].values} if diagnostics else {}
    assert poses, f"no pose received; diagnostics {last}; tracker stderr: {tracker_err[-3000:]}"
    stamps = {p.header.stamp.sec * 1_000_000_000 + p.header.stamp.nanosec for p in poses}
    assert stamps <= set(image_stamps)
    assert {p.header.frame_id for p in poses} == {"camera_optical"}
    assert len(covariances) == len(poses)
    for message in covariances:
        covariance = np.array(message.pose.covariance).reshape(6, 6)
        assert np.isfinite(covariance).all()
        np.testing.assert_allclose(covariance, covariance.T, rtol=1e-6, atol=1e-12)
    for pose in poses:
        q = pose.pose.orientation
        assert np.linalg.norm([q.x, q.y, q.z, q.w]) == pytest.approx(1.0)
        assert np.isfinite([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z]).all()
    assert overlays, "no overlay while subscribed"
    assert {(o.encoding, o.width, o.height, o.header.frame_id) for o in overlays} == {
        ("rgb8", 320, 240, "camera_optical")
    }
    assert {o.header.stamp.sec * 1_000_000_000 + o.header.stamp.nanosec for o in overlays} <= set(
        image_stamps
    )
    added = [m for m in markers if m.action == Marker.ADD]
    assert len(added) == len(poses)
    assert {(m.ns, m.id, m.type, m.header.frame_id) for m in added} == {
        ("drone_pose", 0, Marker.TRIANGLE_LIST, "camera_optical")
    }
    assert len(added[0].points) == 3 * len(load_drone("m2ed").faces)
    assert [m.pose.position.z for m in added] == [p.pose.position.z for p in poses]
    tracker_tf = [t for m in transforms for t in m.transforms if t.child_frame_id == "drone"]
    assert len(tracker_tf) == len(poses)
    assert {t.header.frame_id for t in tracker_tf} == {"camera_optical"}
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert int(values["images_received"]) == 20
    processed = int(values.get("frames_processed", 0))
    rejected_inputs = sum(int(values.get(f"rejected_{reason}", 0)) for reason in INPUT_REJECTIONS)
    assert processed + int(values.get("frames_dropped", 0)) + rejected_inputs == 20, values
    assert processed >= 15, values
    assert int(values["poses_published"]) == len(poses)
    assert {
        "input_rate_hz",
        "processed_rate_hz",
        "latency_p50_ms",
        "latency_p95_ms",
        "device",
        "model",
    } <= set(values)


def test_bad_inputs_are_counted_and_never_kill_the_node(ros_node, flight):
    """Wrong encodings, truncated data, 0x0 images, size mismatches, NaN and zero intrinsics,
    missing camera_info and stamps going backwards: each counted under its reason, node alive."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, Image

    node, executor = ros_node
    _, checkpoint, _ = flight
    diagnostics, poses = [], []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=10))
    node.create_subscription(PoseStamped, "/bad/pose", poses.append, QoSProfile(depth=50))
    markers = []
    node.create_subscription(Marker, "/bad/marker", markers.append, QoSProfile(depth=50))
    images = node.create_publisher(Image, "/bad/image", QoSProfile(depth=10))
    infos = node.create_publisher(CameraInfo, "/bad/camera_info", QoSProfile(depth=10))
    tracker = start_tracker(checkpoint, "-r", "__ns:=/bad")

    def image(sec, width=320, height=240, encoding="rgb8", data=None, step=None):
        msg = Image(height=height, width=width, encoding=encoding, step=width * 3 if step is None else step)
        msg.header.stamp, msg.header.frame_id = Time(sec=sec), "camera_optical"
        msg.data = bytes(width * height * 3) if data is None else data
        return msg

    def info(sec, k=(252.7, 0, 160, 0, 252.7, 120, 0, 0, 1)):
        msg = CameraInfo(width=320, height=240, k=[float(v) for v in k])
        msg.header.stamp, msg.header.frame_id = Time(sec=sec), "camera_optical"
        return msg

    def send(publisher, message, settle=0.3):
        publisher.publish(message)
        spin_until(executor, lambda: False, timeout_s=settle)

    try:
        assert spin_until(
            executor,
            lambda: images.get_subscription_count() > 0 and infos.get_subscription_count() > 0,
            timeout_s=60.0,
        ), "tracker did not subscribe"
        spin_until(executor, lambda: False, timeout_s=1.0)  # discovery settles on the tracker's side too
        send(images, image(1), settle=1.5)  # no camera_info at all within camera_info_wait_s
        send(infos, info(2))
        send(images, image(2, encoding="yuv422"))
        send(images, image(3, data=bytes(100)))  # truncated
        send(images, image(4, width=0, height=0, data=b""))
        send(images, image(5, width=160, height=120))  # size differs from camera_info
        send(images, image(6), settle=3.0)  # a good frame: processed
        send(images, image(5))  # stamp going backwards
        send(infos, info(7, k=(float("nan"),) * 9))
        send(images, image(7))
        send(infos, info(8, k=(0,) * 9))
        send(images, image(8))
        send(infos, info(9))
        send(images, image(9), settle=3.0)  # still alive: processed
        # the track is lost when a frame fails the (now strict) reprojection threshold: marker deleted
        from rclpy.parameter import Parameter
        from rclpy.parameter_client import AsyncParameterClient

        client = AsyncParameterClient(node, "/bad/drone_pose_tracker")
        assert spin_until(executor, client.services_are_ready, timeout_s=30.0)
        future = client.set_parameters([Parameter("max_reprojection_rms_px", value=1e-9)])
        assert spin_until(executor, future.done, timeout_s=10.0)
        assert future.result().results[0].successful
        send(images, image(10), settle=3.0)
        assert spin_until(executor, lambda: len(diagnostics) >= 1, timeout_s=5.0)
        spin_until(executor, lambda: False, timeout_s=1.2)
        assert tracker.poll() is None, "the tracker died"
    finally:
        tracker.terminate()
        _, tracker_err = tracker.communicate(timeout=20)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    expected = {
        "missing_camera_info": 1,
        "bad_image": 3,
        "camera_info_size_mismatch": 1,
        "stamp_not_increasing": 1,
        "bad_camera_info": 2,
    }
    for reason, count in expected.items():
        assert int(values.get(f"rejected_{reason}", 0)) == count, f"{reason}: {values} {tracker_err[-2000:]}"
    assert int(values["frames_processed"]) == 3
    assert int(values.get("rejected_high_reprojection_error", 0)) == 1, str(values)
    assert [m.action for m in markers][-1] == Marker.DELETE
    assert [m.action for m in markers].count(Marker.ADD) == len(poses)
    for pose in poses:
        assert np.isfinite([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z]).all()


def test_thresholds_change_at_run_time_and_bad_values_are_refused(ros_node, flight):
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    node, executor = ros_node
    _, checkpoint, _ = flight
    params_file = Path(__file__).resolve().parents[2] / "config" / "tracker.yaml"
    tracker = start_tracker(
        checkpoint,
        "-r",
        "__ns:=/params",
        "--params-file",
        str(params_file),
        "-p",
        f"checkpoint:={checkpoint}",
        "-p",
        "drone_frame:=quadrotor",
    )
    try:
        client = AsyncParameterClient(node, "/params/drone_pose_tracker")
        assert spin_until(executor, client.services_are_ready, timeout_s=60.0), "no parameter services"

        def set_one(name, value):
            future = client.set_parameters([Parameter(name, value=value)])
            assert spin_until(executor, future.done, timeout_s=10.0)
            return future.result().results[0]

        assert set_one("max_reprojection_rms_px", 3.5).successful
        assert not set_one("max_reprojection_rms_px", -1.0).successful
        assert set_one("max_position_std_m", 0.25).successful
        assert not set_one("max_position_std_m", 0.0).successful
        assert not set_one("checkpoint", "/elsewhere.pt").successful
        assert set_one("keypoint_confidence_power", 0.0).successful
        assert not set_one("keypoint_confidence_power", -2.0).successful  # declared range [0, 16]
        assert set_one("zoom_pass", False).successful
        assert not set_one("zoom_pass", 2).successful  # declared bool
        assert set_one("flip_test", False).successful
        assert not set_one("flip_test", "zoom").successful  # declared bool
        future = client.get_parameters(
            ["max_reprojection_rms_px", "checkpoint", "drone_frame", "input_queue_depth"]
        )
        assert spin_until(executor, future.done, timeout_s=10.0)
        values = future.result().values
        assert values[0].double_value == 3.5
        assert values[1].string_value == str(checkpoint)
        assert values[2].string_value == "quadrotor"  # command line after the file wins
        assert values[3].integer_value == 5
        listed = client.list_parameters()
        assert spin_until(executor, listed.done, timeout_s=10.0)
        file_keys = set(yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"])
        assert file_keys <= set(
            listed.result().result.names
        )  # the shipped file sets declared parameters only
        descriptions = client.describe_parameters(["min_keypoint_confidence"])
        assert spin_until(executor, descriptions.done, timeout_s=10.0)
        assert "heatmap peak" in descriptions.result().descriptors[0].description
    finally:
        tracker.terminate()
        tracker.communicate(timeout=20)


def test_compressed_transport(ros_node, flight):
    """image_transport: compressed reads <image>/compressed JPEGs; an undecodable one is counted."""
    import cv2
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, CompressedImage

    node, executor = ros_node
    _, checkpoint, _ = flight
    diagnostics = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=10))
    images = node.create_publisher(CompressedImage, "/jpeg/image/compressed", QoSProfile(depth=10))
    infos = node.create_publisher(CameraInfo, "/jpeg/camera_info", QoSProfile(depth=10))
    tracker = start_tracker(checkpoint, "-r", "__ns:=/jpeg", "-p", "image_transport:=compressed")
    try:
        ready = lambda: images.get_subscription_count() > 0 and infos.get_subscription_count() > 0  # noqa: E731
        assert spin_until(executor, ready, timeout_s=60.0)
        spin_until(executor, lambda: False, timeout_s=1.0)  # discovery settles on the tracker's side too
        ok, jpeg = cv2.imencode(".jpg", np.full((240, 320, 3), 128, np.uint8))
        assert ok
        for sec, data in ((1, jpeg.tobytes()), (2, b"not a jpeg")):
            info = CameraInfo(width=320, height=240, k=[252.7, 0.0, 160.0, 0.0, 252.7, 120.0, 0.0, 0.0, 1.0])
            info.header.stamp, info.header.frame_id = Time(sec=sec), "camera_optical"
            infos.publish(info)  # as camera drivers do: one CameraInfo per image, same stamp
            spin_until(executor, lambda: False, timeout_s=0.3)
            message = CompressedImage(format="jpeg", data=data)
            message.header.stamp, message.header.frame_id = Time(sec=sec), "camera_optical"
            images.publish(message)
            spin_until(executor, lambda: False, timeout_s=2.0)
        diagnostics.clear()
        assert spin_until(executor, lambda: len(diagnostics) >= 1, timeout_s=5.0)
    finally:
        tracker.terminate()
        tracker.communicate(timeout=20)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert int(values.get("frames_processed", 0)) == 1, str(values)
    assert int(values.get("rejected_bad_image", 0)) == 1, values


def test_a_bag_with_a_corrupt_message(ros_node, flight, tmp_path):
    """One image message's CDR is truncated: replay skips and counts it, the tracker processes the
    other frames, and eval-bag reports it as undecodable and scores the rest."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from drone_pose.bags.messages import TYPESTORE
    from drone_pose.evaluation.bag_evaluation import evaluate_bag

    node, executor = ros_node
    bag, checkpoint, image_stamps = flight
    damaged = tmp_path / "damaged"
    with Reader(bag) as reader, Writer(damaged, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {
            c.id: writer.add_connection(
                c.topic, c.msgtype, typestore=TYPESTORE, offered_qos_profiles=c.ext.offered_qos_profiles
            )
            for c in reader.connections
        }
        broken = image_stamps[3]
        for connection, timestamp, raw in reader.messages():
            if connection.topic == "/camera/image_raw" and timestamp == broken:
                raw = raw[: len(raw) // 3]  # truncated CDR
            writer.write(connections[connection.id], timestamp, raw)
    report = evaluate_bag(damaged, checkpoint, tmp_path / "report")
    assert report["skipped"]["undecodable"] == 1
    assert report["frames"] == len(image_stamps) - 1

    diagnostics = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=10))
    tracker = start_tracker(
        checkpoint, "-r", "image:=/camera/image_raw", "-r", "camera_info:=/camera/camera_info"
    )
    try:
        replay = start(
            sys.executable, "-m", "drone_pose.cli", "replay", str(damaged),
            "--wait-for", "/camera/image_raw", "--wait-timeout", "60",
        )  # fmt: skip
        assert spin_until(executor, lambda: replay.poll() is not None, timeout_s=90.0)
        out, err = replay.communicate(timeout=10)
        assert replay.returncode == 0, err[-2000:]
        summary = json.loads(out)
        assert summary["corrupt_skipped"] == {"/camera/image_raw": 1}
        assert summary["published"]["/camera/image_raw"] == len(image_stamps) - 1
        diagnostics.clear()
        assert spin_until(executor, lambda: len(diagnostics) >= 1, timeout_s=5.0)
        assert tracker.poll() is None, "the tracker died"
    finally:
        tracker.terminate()
        tracker.communicate(timeout=20)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert int(values["images_received"]) == len(image_stamps) - 1
