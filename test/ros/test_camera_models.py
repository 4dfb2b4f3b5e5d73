"""Camera models of CameraInfo: a distorted camera's frames carry its distortion to the estimator;
unsupported models and non-finite coefficients are bad camera_info (plain Python, then real DDS)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from drone_pose.geometry.distortion import Distortion
from drone_pose.ros.frame_pairing import FramePairing
from drone_pose.ros.qos import sensor_data_qos

from ..tiny_models import tiny_checkpoint
from .conftest import spin_until
from .test_tracker import start_tracker

K = (250.0, 0.0, 160.0, 0.0, 250.0, 120.0, 0.0, 0.0, 1.0)
PLUMB_BOB = (-0.28, 0.07, 0.0005, -0.0003, 0.0)
FISHEYE = (-0.02, 0.01, -0.005, 0.001)
NAN = float("nan")


def info(stamp_ns: int, model: str, d) -> SimpleNamespace:
    stamp = SimpleNamespace(sec=0, nanosec=stamp_ns)
    header = SimpleNamespace(stamp=stamp, frame_id="camera_optical")
    return SimpleNamespace(header=header, k=K, width=320, height=240, distortion_model=model, d=d)


def pair(camera_info: SimpleNamespace) -> tuple[list[str], object]:
    """Rejections and the parked frame (or None) of one image paired with `camera_info`."""
    rejected: list[str] = []
    pairing = FramePairing(0.1, Counter(), rejected.append)
    pairing.add_camera_info(camera_info)
    pairing.add_image(np.zeros((240, 320, 3), np.uint8), camera_info.header)
    return rejected, pairing.mailbox.take(0.0)


@pytest.mark.parametrize(
    ("model", "d", "expected"),
    [
        ("plumb_bob", PLUMB_BOB, Distortion("plumb_bob", PLUMB_BOB)),
        (
            "rational_polynomial",
            (*PLUMB_BOB, 0.1, 0, 0),
            Distortion("rational_polynomial", (*PLUMB_BOB, 0.1)),
        ),
        ("equidistant", FISHEYE, Distortion("equidistant", FISHEYE)),
        ("plumb_bob", (0.0,) * 5, None),  # a rectified or ideal camera: the pinhole path
        ("", (), None),  # drivers that leave both empty
    ],
)
def test_frames_carry_the_camera_model(model, d, expected):
    rejected, frame = pair(info(10, model, d))
    assert rejected == []
    assert frame.distortion == expected


@pytest.mark.parametrize(
    ("model", "d"),
    [
        ("plumb_bob", (0.1, NAN, 0.0, 0.0, 0.0)),
        ("equidistant", (float("inf"), 0.0, 0.0, 0.0)),
        ("kannala_brandt", FISHEYE),
        ("", (0.1, 0.0, 0.0, 0.0, 0.0)),
        ("equidistant", (*FISHEYE, 0.3)),
    ],
)
def test_unusable_camera_models_are_bad_camera_info(model, d):
    rejected, frame = pair(info(10, model, d))
    assert rejected == ["bad_camera_info"]
    assert frame is None


@pytest.mark.ros
def test_distorted_cameras_are_tracked_and_nan_coefficients_counted_over_dds(ros_node, tmp_path):
    """Over real DDS: plumb_bob and equidistant frames are processed (overlays drawn through the
    lens); NaN coefficients and an unknown model are counted as bad_camera_info; the node lives."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo

    node, executor = ros_node
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    diagnostics, overlays = [], []
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, QoSProfile(depth=10))
    node.create_subscription(Image, "/lens/overlay", overlays.append, sensor_data_qos(10))
    images = node.create_publisher(Image, "/lens/image", QoSProfile(depth=10))
    infos = node.create_publisher(CameraInfo, "/lens/camera_info", QoSProfile(depth=10))
    tracker = start_tracker(checkpoint, "-r", "__ns:=/lens")

    def image(sec: int) -> Image:
        msg = Image(height=240, width=320, encoding="rgb8", step=320 * 3, data=bytes(320 * 240 * 3))
        msg.header.stamp, msg.header.frame_id = Time(sec=sec), "camera_optical"
        return msg

    def camera_info(sec: int, model: str, d) -> CameraInfo:
        msg = CameraInfo(width=320, height=240, k=list(K), distortion_model=model, d=[float(v) for v in d])
        msg.header.stamp, msg.header.frame_id = Time(sec=sec), "camera_optical"
        return msg

    def send(sec: int, model: str, d, processed: int) -> None:
        """One camera_info and its image; waits until `processed` overlays (one per processed
        frame) have arrived, or briefly for a frame that is rejected on arrival."""
        infos.publish(camera_info(sec, model, d))
        spin_until(executor, lambda: False, timeout_s=0.2)
        images.publish(image(sec))
        spin_until(executor, lambda: len(overlays) >= processed, timeout_s=15.0)
        spin_until(executor, lambda: False, timeout_s=0.2)

    def counted() -> bool:
        values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values} if diagnostics else {}
        return int(values.get("frames_processed", 0)) + int(values.get("rejected_bad_camera_info", 0)) >= 4

    try:
        assert spin_until(
            executor,
            lambda: (
                images.get_subscription_count() > 0
                and infos.get_subscription_count() > 0
                and node.count_publishers("/lens/overlay") > 0
            ),
            timeout_s=60.0,
        ), "tracker did not subscribe"
        spin_until(executor, lambda: False, timeout_s=1.0)  # discovery settles on the tracker's side too
        send(1, "plumb_bob", PLUMB_BOB, processed=1)
        send(2, "plumb_bob", (0.1, NAN, 0.0, 0.0, 0.0), processed=1)
        send(3, "kannala_brandt", FISHEYE, processed=1)
        send(4, "equidistant", FISHEYE, processed=2)
        spin_until(executor, counted, timeout_s=5.0)
        assert tracker.poll() is None, "the tracker died"
    finally:
        tracker.terminate()
        _, tracker_err = tracker.communicate(timeout=20)
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    assert int(values.get("rejected_bad_camera_info", 0)) == 2, f"{values} {tracker_err[-2000:]}"
    assert int(values["frames_processed"]) == 2, f"{values} {tracker_err[-2000:]}"
    assert int(values.get("rejected_estimator_error", 0)) == 0, tracker_err[-2000:]
    assert len(overlays) == 2
