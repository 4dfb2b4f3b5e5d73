"""A pose estimate as ROS messages: PoseStamped, PoseWithCovarianceStamped, TF and RViz markers.

Poses are camera optical frame <- drone body frame (p_cam = R p_drone + t, metres) and carry the
image's header (stamp and frame_id), never now(). The covariance [6,6] is in PnP's order (tx, ty,
tz, rx, ry, rz) with the rotation as a left perturbation in the camera frame, which is ROS's (x, y,
z, rot x, rot y, rot z) about the header frame's axes: it is copied as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import Point, Pose, PoseStamped, PoseWithCovarianceStamped
from visualization_msgs.msg import Marker

from drone_pose.drones import DroneModel
from drone_pose.geometry.rotations import matrix_to_quaternion_xyzw
from drone_pose.ros.tf import transform_stamped

MARKER_NAMESPACE = "drone_pose"
MARKER_COLOUR_RGBA = (0.1, 0.8, 0.3, 0.8)


@dataclass(frozen=True)
class PoseMessages:
    """The messages of one valid pose: pose, pose_with_covariance and the /tf transform."""

    pose: PoseStamped
    pose_with_covariance: PoseWithCovarianceStamped
    transform: Any  # geometry_msgs/TransformStamped, image frame -> drone frame


def pose_messages(
    header: Any, R: np.ndarray, t: np.ndarray, covariance: np.ndarray, drone_frame: str
) -> PoseMessages:
    """Messages of a pose R [3,3], t [3] metres with covariance [6,6] (PnP order = ROS order);
    ValueError when any of them is not finite."""
    R, t, covariance = (np.asarray(a, dtype=np.float64) for a in (R, t, covariance))
    if not (np.isfinite(R).all() and np.isfinite(t).all() and np.isfinite(covariance).all()):
        raise ValueError("pose or covariance is not finite")
    quaternion = matrix_to_quaternion_xyzw(torch.from_numpy(np.ascontiguousarray(R))).numpy()
    pose = PoseStamped(header=header, pose=pose_of(quaternion, t))
    with_covariance = PoseWithCovarianceStamped(header=header)
    with_covariance.pose.pose = pose_of(quaternion, t)
    with_covariance.pose.covariance = [float(v) for v in covariance.reshape(36)]
    transform = transform_stamped(quaternion, t, header.stamp, header.frame_id, drone_frame)
    return PoseMessages(pose, with_covariance, transform)


def pose_of(quaternion_xyzw: np.ndarray, t: np.ndarray) -> Pose:
    """geometry_msgs/Pose of a unit quaternion (x, y, z, w) and a position (metres)."""
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in t)
    q = pose.orientation
    q.x, q.y, q.z, q.w = (float(v) for v in quaternion_xyzw)
    return pose


def mesh_marker(drone: DroneModel) -> Marker:
    """The drone mesh as a TRIANGLE_LIST in the drone frame (namespace drone_pose, id 0), to be posed
    per frame with posed_marker."""
    marker = Marker(ns=MARKER_NAMESPACE, id=0, type=Marker.TRIANGLE_LIST)
    marker.scale.x = marker.scale.y = marker.scale.z = 1.0
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = MARKER_COLOUR_RGBA
    marker.points = [
        Point(x=float(x), y=float(y), z=float(z)) for x, y, z in drone.vertices[drone.faces.reshape(-1)]
    ]
    return marker


def posed_marker(marker: Marker, messages: PoseMessages) -> Marker:
    """`marker` (from mesh_marker) added at the pose of `messages`, with its header; updated in place
    so the mesh's points are not copied per frame."""
    marker.header = messages.pose.header
    marker.action = Marker.ADD
    marker.pose = messages.pose.pose
    return marker


def delete_marker(header: Any) -> Marker:
    """The DELETE of the mesh marker, sent once when the track is lost."""
    return Marker(header=header, ns=MARKER_NAMESPACE, id=0, action=Marker.DELETE)
