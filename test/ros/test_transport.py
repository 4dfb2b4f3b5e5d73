"""Real DDS between processes: camera frames over shared memory, /tf and latched /tf_static."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from drone_pose.ros.image_conversions import image_to_numpy
from drone_pose.ros.qos import TF_STATIC_TOPIC, TF_TOPIC, sensor_data_qos, tf_qos, tf_static_qos

from .conftest import spin_until

pytestmark = pytest.mark.ros

FRAMES = 90  # 3 s at 30 Hz


def test_camera_frames_cross_processes_at_30hz(ros_node, start_process):
    node, executor = ros_node
    received: list[tuple[int, float, tuple[int, ...], str, str]] = []

    def on_image(msg: Image) -> None:
        pixels = image_to_numpy(msg)
        index = int(np.frombuffer(pixels.reshape(-1)[:4].tobytes(), dtype=np.uint32)[0])
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        received.append((index, stamp, pixels.shape, msg.encoding, msg.header.frame_id))

    node.create_subscription(Image, "camera/image_raw", on_image, sensor_data_qos())
    publisher = start_process("image_publisher.py", "--count", str(FRAMES), "--rate", "30")
    spin_until(executor, lambda: publisher.poll() is not None, timeout_s=40.0)
    spin_until(executor, lambda: False, timeout_s=0.3)  # drain frames still in flight
    stdout, stderr = publisher.communicate(timeout=10)
    assert publisher.returncode == 0, f"publisher failed: {stdout}\n{stderr}"
    assert f"SENT {FRAMES}" in stdout

    assert len(received) >= 0.95 * FRAMES, f"received {len(received)} of {FRAMES} frames"
    indices = [r[0] for r in received]
    assert indices == sorted(set(indices)), "frames reordered or duplicated"
    assert all(0 <= i < FRAMES for i in indices)
    for index, stamp, shape, encoding, frame_id in received:
        assert shape == (480, 640, 3)
        assert encoding == "rgb8"
        assert frame_id == "camera_optical"
        assert stamp == pytest.approx(index / 30.0, abs=1e-6)


def test_tf_reaches_another_process(ros_node, start_process):
    node, executor = ros_node
    messages: list[TFMessage] = []
    node.create_subscription(TFMessage, TF_TOPIC, messages.append, tf_qos())
    start_process("tf_publisher.py")
    assert spin_until(executor, lambda: len(messages) >= 3, timeout_s=20.0), "no /tf received"
    transform = messages[-1].transforms[0]
    assert (transform.header.frame_id, transform.child_frame_id) == ("camera_optical", "drone")
    t, q = transform.transform.translation, transform.transform.rotation
    assert [t.x, t.y, t.z] == pytest.approx([0.5, -0.25, 4.0])
    assert [q.x, q.y, q.z, q.w] == pytest.approx([0.0, 0.0, 0.38268343, 0.92387953], abs=1e-7)


def test_tf_static_reaches_a_late_subscriber(ros_node, start_process):
    node, executor = ros_node
    publisher = start_process("tf_publisher.py")
    assert publisher.stdout.readline().strip() == "READY"
    spin_until(executor, lambda: False, timeout_s=1.0)  # the static transform was sent before we subscribe
    messages: list[TFMessage] = []
    node.create_subscription(TFMessage, TF_STATIC_TOPIC, messages.append, tf_static_qos())
    assert spin_until(executor, lambda: len(messages) >= 1, timeout_s=20.0), (
        "late subscriber got no /tf_static"
    )
    (transform,) = messages[0].transforms
    assert (transform.header.frame_id, transform.child_frame_id) == ("base_link", "camera_optical")
    q = transform.transform.rotation
    assert [q.x, q.y, q.z, q.w] == pytest.approx([-0.5, 0.5, -0.5, 0.5])
