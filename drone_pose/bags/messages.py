"""ROS 2 messages as `rosbags` objects (no rclpy): builders, CDR serialisation and bag QoS.

Poses are camera optical/parent <- child: R [3,3], t [3] metres. Quaternions are (x, y, z, w),
the ROS order (w >= 0). Stamps are integer nanoseconds since the epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.typesys import Stores, get_typestore

from drone_pose.geometry.rotations import matrix_to_quaternion_xyzw

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = TYPESTORE.types
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
_INFINITE = QosTime(sec=2147483647, nsec=4294967295)  # rmw's "infinite" duration in bag metadata


def bag_qos(depth: int, transient_local: bool = False) -> Qos:
    """Offered QoS for bag metadata: reliable, keep last `depth`, volatile or transient local."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=_INFINITE,
        lifespan=_INFINITE,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_INFINITE,
        avoid_ros_namespace_conventions=False,
    )


def header(stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header at a stamp in nanoseconds."""
    stamp = T["builtin_interfaces/msg/Time"](
        sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)
    )
    return T["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def stamp_ns(msg_header: Any) -> int:
    """A header's stamp in nanoseconds."""
    return int(msg_header.stamp.sec) * 1_000_000_000 + int(msg_header.stamp.nanosec)


def image_rgb8(pixels: np.ndarray, stamp: int, frame_id: str) -> Any:
    """sensor_msgs/Image (rgb8) of an [H,W,3] uint8 RGB array."""
    height, width = pixels.shape[:2]
    return T[IMAGE](
        header=header(stamp, frame_id),
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * width,
        data=np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1),
    )


def camera_info(K: np.ndarray, width: int, height: int, stamp: int, frame_id: str) -> Any:
    """sensor_msgs/CameraInfo of an undistorted pinhole camera K [3,3]."""
    P = np.zeros((3, 4))
    P[:, :3] = K
    return T[CAMERA_INFO](
        header=header(stamp, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.asarray(K, np.float64).reshape(9),
        r=np.eye(3).reshape(9),
        p=P.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternions [...,4] (x, y, z, w) of rotation matrices [...,3,3]."""
    return matrix_to_quaternion_xyzw(torch.as_tensor(np.asarray(R, np.float64))).numpy()


def pose_stamped(R: np.ndarray, t: np.ndarray, stamp: int, frame_id: str) -> Any:
    """geometry_msgs/PoseStamped of the child's pose (R [3,3], t [3]) in frame_id."""
    x, y, z, w = quaternion_xyzw(R)
    return T[POSE_STAMPED](
        header=header(stamp, frame_id),
        pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
            orientation=T["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)),
        ),
    )


def transform_stamped(R: np.ndarray, t: np.ndarray, stamp: int, parent: str, child: str) -> Any:
    """geometry_msgs/TransformStamped parent <- child."""
    x, y, z, w = quaternion_xyzw(R)
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp, parent),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
            rotation=T["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)),
        ),
    )


def tf_message(transforms: list[Any]) -> Any:
    """tf2_msgs/TFMessage of TransformStamped messages."""
    return T[TF_MESSAGE](transforms=transforms)


def serialize(msg: Any) -> bytes:
    """CDR (little endian) bytes of a message, as rosbag2 and rclpy store them."""
    return bytes(TYPESTORE.serialize_cdr(msg, msg.__msgtype__))


def deserialize(data: bytes | memoryview, msgtype: str) -> Any:
    """A message from CDR bytes."""
    return TYPESTORE.deserialize_cdr(data, msgtype)
