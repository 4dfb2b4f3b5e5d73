"""Test helpers for bags: a bag copied with some of its messages left out (frames a camera dropped)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from drone_pose.bags import messages


def copy_bag(source: Path, target: Path, keep: Callable[[str, int], bool]) -> Path:
    """Copy the bag `source` to the new folder `target` with the messages for which keep(topic,
    log time ns) is true, its connections (QoS included) and custom metadata."""
    with Reader(source) as reader, Writer(target, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for key, value in (reader.storage.metadata.custom or {}).items():
            writer.set_custom_data(key, value)
        connections = {
            c.id: writer.add_connection(
                c.topic,
                c.msgtype,
                typestore=messages.TYPESTORE,
                offered_qos_profiles=c.ext.offered_qos_profiles,
            )
            for c in reader.connections
        }
        for connection, timestamp, raw in reader.messages():
            if keep(connection.topic, timestamp):
                writer.write(connections[connection.id], timestamp, raw)
    return target
