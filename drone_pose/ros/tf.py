"""TF publishing and listening with tf2's topics and QoS (tf2_ros is not required).

The listener feeds a drone_pose.ros.transform_buffer.TransformBuffer, which does the lookups.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from rclpy.callback_groups import CallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from tf2_msgs.msg import TFMessage

from drone_pose.ros.qos import TF_STATIC_TOPIC, TF_TOPIC, tf_qos, tf_static_listener_qos, tf_static_qos
from drone_pose.ros.transform_buffer import TransformBuffer


def transform_stamped(
    rotation_xyzw: np.ndarray, translation: np.ndarray, stamp: Time, parent_frame: str, child_frame: str
) -> TransformStamped:
    """parent<-child transform: p_parent = R(q) p_child + translation (metres, quaternion x, y, z, w)."""
    q = np.asarray(rotation_xyzw, dtype=np.float64).reshape(4)
    p = np.asarray(translation, dtype=np.float64).reshape(3)
    if not (np.isfinite(q).all() and np.isfinite(p).all()):
        raise ValueError(f"transform {parent_frame} <- {child_frame} is not finite")
    norm = np.linalg.norm(q)
    if norm < 1e-9:
        raise ValueError(f"transform {parent_frame} <- {child_frame} has a zero quaternion")
    q = q / norm
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent_frame
    msg.child_frame_id = child_frame
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (
        float(v) for v in p
    )
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg


class TransformBroadcaster:
    """Publishes dynamic transforms on /tf (reliable, depth 100), like tf2_ros.TransformBroadcaster."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._publisher = node.create_publisher(TFMessage, TF_TOPIC, tf_qos())

    def send(self, transforms: Iterable[TransformStamped]) -> None:
        self._publisher.publish(TFMessage(transforms=list(transforms)))

    def close(self) -> None:
        """Destroy the /tf publisher (a lifecycle node's cleanup)."""
        self._node.destroy_publisher(self._publisher)


class StaticTransformBroadcaster:
    """Latches transforms on /tf_static (transient local), like tf2_ros.StaticTransformBroadcaster.

    Every send republishes the union of all transforms sent so far, keyed by child frame, so a late
    subscriber receives all of them in one message.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._publisher = node.create_publisher(TFMessage, TF_STATIC_TOPIC, tf_static_qos())
        self._by_child: dict[str, TransformStamped] = {}

    def send(self, transforms: Iterable[TransformStamped]) -> None:
        for transform in transforms:
            self._by_child[transform.child_frame_id] = transform
        self._publisher.publish(TFMessage(transforms=list(self._by_child.values())))

    def close(self) -> None:
        """Destroy the /tf_static publisher (a lifecycle node's cleanup)."""
        self._node.destroy_publisher(self._publisher)


class TransformListener:
    """Subscribes /tf (reliable, volatile, depth 100) and /tf_static (reliable, transient local,
    depth 100), like tf2_ros.TransformListener, and stores every transform in `buffer`.

    The subscriptions run on `node`'s executor, in `callback_group` (default: a reentrant group of
    their own, so a callback that waits for a transform in another group does not block them).
    The buffer is thread-safe: look up from any thread. close() destroys the subscriptions (a
    lifecycle node's cleanup); the buffer keeps what it holds.
    """

    def __init__(
        self,
        node: Node,
        buffer: TransformBuffer | None = None,
        callback_group: CallbackGroup | None = None,
    ) -> None:
        self.buffer = buffer if buffer is not None else TransformBuffer()
        self._node = node
        group = callback_group if callback_group is not None else ReentrantCallbackGroup()
        self._subscriptions = [
            node.create_subscription(TFMessage, TF_TOPIC, self._on_tf, tf_qos(), callback_group=group),
            node.create_subscription(
                TFMessage, TF_STATIC_TOPIC, self._on_tf_static, tf_static_listener_qos(), callback_group=group
            ),
        ]

    def _on_tf(self, message: TFMessage) -> None:
        self.buffer.add_tf_message(message, static=False)

    def _on_tf_static(self, message: TFMessage) -> None:
        self.buffer.add_tf_message(message, static=True)

    def close(self) -> None:
        """Destroy the /tf and /tf_static subscriptions (idempotent)."""
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions.clear()
