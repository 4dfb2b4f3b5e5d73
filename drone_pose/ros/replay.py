"""`drone-pose replay BAG`: publish a rosbag2 file (MCAP or sqlite3) over DDS like `ros2 bag play`.

Messages keep their serialized bytes (rclpy publishes raw CDR) and their recorded timing, scaled
by `rate`; each topic gets the QoS the bag recorded as offered (e.g. /tf_static transient local).
Every message is checked by deserialising it first: a corrupt one is counted and skipped, never
sent. With `clock`, /clock carries the bag time so that nodes with use_sim_time follow it.
"""

from __future__ import annotations

import importlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.rosbag2 import Reader
from rosgraph_msgs.msg import Clock

from drone_pose.bags.frames import open_bag
from drone_pose.errors import UserError


def message_class(type_name: str) -> type:
    """The rclpy message class of 'pkg/msg/Name'; ValueError when it is not installed."""
    package, kind, name = [*type_name.split("/"), "", ""][:3]
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"message type {type_name!r} is not available in this ROS installation") from error


def qos_of(connection: Any) -> QoSProfile:
    """The QoS a bag connection was recorded with (reliable, keep last 10 when it says nothing)."""
    offered = getattr(connection.ext, "offered_qos_profiles", None) or []
    if not offered:
        return QoSProfile(depth=10)
    profile = offered[0]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(1, int(profile.depth)),
        reliability=ReliabilityPolicy.BEST_EFFORT
        if profile.reliability == QosReliability.BEST_EFFORT
        else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL
        if profile.durability == QosDurability.TRANSIENT_LOCAL
        else DurabilityPolicy.VOLATILE,
    )


def replay_bag(
    path: str | Path,
    rate: float = 1.0,
    loop: bool = False,
    topics: list[str] | None = None,
    clock: bool = False,
    wait_for: str | None = None,
    wait_timeout_s: float = 30.0,
    delay_s: float = 0.5,
    node_name: str = "drone_pose_replay",
) -> dict[str, Any]:
    """Publish the bag; returns counts per topic and the messages skipped as corrupt.

    delay_s: pause between creating the publishers (and finding the awaited subscriber) and the
    first message, like `ros2 bag play --delay`: a best-effort subscriber drops samples from a
    publisher it has not discovered yet, even when the publisher has already discovered it.
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"bag not found: {path}")
    rclpy.init()
    node = Node(node_name)
    published: Counter[str] = Counter()
    corrupt: Counter[str] = Counter()
    try:
        with open_bag(path) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            if not connections:
                raise UserError(f"{path}: none of the requested topics is in the bag; check --topics")
            classes = {c.id: message_class(c.msgtype) for c in connections}
            publishers = {c.id: node.create_publisher(classes[c.id], c.topic, qos_of(c)) for c in connections}
            clock_publisher = node.create_publisher(Clock, "/clock", 10) if clock else None
            if wait_for is not None:
                _wait_for_subscriber(
                    node,
                    [p for c, p in publishers.items() if _topic(connections, c) == wait_for],
                    wait_timeout_s,
                )
            time.sleep(delay_s)  # both ends of every new connection discover each other before data flows
            while True:
                _play_once(
                    reader, connections, classes, publishers, clock_publisher, rate, published, corrupt, node
                )
                if not loop or not rclpy.ok():
                    break
            for publisher in publishers.values():  # reliable topics: every subscriber has everything
                publisher.wait_for_all_acked(Duration(seconds=2))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return {"bag": str(path), "published": dict(published), "corrupt_skipped": dict(corrupt)}


def _topic(connections: list[Any], connection_id: int) -> str:
    return next(c.topic for c in connections if c.id == connection_id)


def _wait_for_subscriber(node: Node, publishers: list[Any], timeout_s: float) -> None:
    if not publishers:
        raise ValueError("--wait-for names a topic that is not replayed")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() > 0 for p in publishers):
            return
        time.sleep(0.05)
    node.get_logger().warning(f"no subscriber after {timeout_s:.0f} s; playing anyway")


def _play_once(
    reader: Reader,
    connections: list[Any],
    classes: dict[int, type],
    publishers: dict[int, Any],
    clock_publisher: Any,
    rate: float,
    published: Counter,
    corrupt: Counter,
    node: Node,
) -> None:
    start_wall = time.monotonic()
    start_bag: int | None = None
    for connection, timestamp, raw in reader.messages(connections=connections):
        if start_bag is None:
            start_bag = timestamp
        delay = (timestamp - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
        if delay > 0:
            time.sleep(delay)
        try:
            deserialize_message(bytes(raw), classes[connection.id])
        except Exception as error:  # rclpy raises several types for bad CDR
            corrupt[connection.topic] += 1
            node.get_logger().warning(f"skipping corrupt message on {connection.topic}: {error}")
            continue
        if clock_publisher is not None:
            message = Clock()
            message.clock.sec, message.clock.nanosec = divmod(timestamp, 1_000_000_000)
            clock_publisher.publish(message)
        publishers[connection.id].publish(bytes(raw))
        published[connection.topic] += 1
