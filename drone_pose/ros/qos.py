"""QoS profiles shared by drone_pose's publishers and subscriptions."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


def sensor_data_qos(depth: int = 5) -> QoSProfile:
    """Camera streams: best effort, volatile, keep last `depth` (rclpy's sensor-data profile)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def tf_qos() -> QoSProfile:
    """/tf as tf2_ros publishes and listens: reliable, volatile, keep last 100."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def tf_static_qos() -> QoSProfile:
    """/tf_static as tf2_ros latches it: reliable, transient local, keep last 1."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def tf_static_listener_qos() -> QoSProfile:
    """/tf_static as tf2_ros listens: reliable, transient local, keep last 100 (one latched message per
    static broadcaster; depth 1 could lose all but one of several arriving together)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
