"""TransformListener over real DDS: a static and a dynamic transform from drone_pose's broadcasters
in another process are received and looked up correctly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from drone_pose.ros.tf import TransformListener
from drone_pose.ros.transform_buffer import ExtrapolationError

from .conftest import spin_until

pytestmark = pytest.mark.ros

# as test/ros/processes/tf_publisher.py sends them
DYNAMIC = ([0.0, 0.0, 0.38268343, 0.92387953], [0.5, -0.25, 4.0])  # camera_optical <- drone
STATIC = ([-0.5, 0.5, -0.5, 0.5], [0.1, 0.0, 0.2])  # base_link <- camera_optical


def homogeneous(q, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q).as_matrix()
    T[:3, 3] = t
    return T


def test_the_listener_receives_static_and_dynamic_transforms(ros_node, start_process):
    node, executor = ros_node
    publisher = start_process("tf_publisher.py")
    assert publisher.stdout.readline().strip() == "READY"  # /tf_static sent before we subscribe
    listener = TransformListener(node)
    buffer = listener.buffer

    def enough() -> bool:
        span = buffer.time_range("drone")
        return buffer.can_transform("base_link", "drone") and span is not None and span[1] - span[0] > 1e8

    assert spin_until(executor, enough, timeout_s=20.0), f"no transforms: {buffer.counters()}"
    assert buffer.parent("camera_optical") == "base_link"
    assert buffer.time_range("camera_optical") is None  # static

    expected = homogeneous(*STATIC) @ homogeneous(*DYNAMIC)
    T, stamp = buffer.lookup_stamped("base_link", "drone")
    np.testing.assert_allclose(T, expected, atol=1e-9)
    oldest, newest = buffer.time_range("drone")
    assert stamp == newest
    np.testing.assert_allclose(buffer.lookup("base_link", "drone", oldest), expected, atol=1e-9)
    between = buffer.lookup("drone", "base_link", (oldest + newest) // 2 + 1)  # interpolated
    np.testing.assert_allclose(between, np.linalg.inv(expected), atol=1e-9)
    with pytest.raises(ExtrapolationError) as error:
        buffer.lookup("base_link", "drone", newest + 10**9)
    assert error.value.future
    counters = buffer.counters()
    assert counters["stored"] == counters["received"] > 2
    assert counters["clock_resets"] == 0

    listener.close()
    received = buffer.counters()["received"]
    spin_until(executor, lambda: False, timeout_s=0.3)  # the publisher keeps sending at 20 Hz
    assert buffer.counters()["received"] == received
    assert list(node.subscriptions) == []
    listener.close()  # idempotent
