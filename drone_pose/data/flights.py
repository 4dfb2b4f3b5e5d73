"""Smooth 6-DoF drone flights seen by a rig of 1 to 4 static ground cameras.

World frame: x forward from the first camera, y left, z up, metres. A flight is a C1 cubic Hermite
spline through random waypoints placed where every camera sees the drone at a distance that gives
the drone's UAVA-like apparent size; some waypoints are hovers (the drone stops and dwells), some
are approaches or retreats (nearest or farthest allowed distance), and some carry a fast yaw
turn. Roll and pitch follow from the flight itself: a quadrotor tilts its thrust axis along the
acceleration it needs, so the body z axis is the direction of (acceleration + gravity), limited
to max_tilt_deg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicHermiteSpline

from drone_pose.data.poses import PoseSamplingConfig, size_range_for
from drone_pose.drones import DroneModel
from drone_pose.errors import UserError

GRAVITY = 9.81
CAMERA_AZIMUTHS_DEG = (0.0, 50.0, -50.0, 100.0)  # around the flight centre, for rigs of 1..4


@dataclass(frozen=True)
class RigCamera:
    """A static camera: name, intrinsics K [3,3], image size, and its optical frame in the world
    (R_world_camera [3,3] whose columns are the optical x, y, z axes; position [3] metres)."""

    name: str
    K: np.ndarray
    width: int
    height: int
    R_world_camera: np.ndarray
    position: np.ndarray

    @property
    def optical_frame(self) -> str:
        return f"{self.name}_optical"

    def drone_pose(self, R_world_body: np.ndarray, p_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera optical <- drone body poses: R [...,3,3], t [...,3] from world poses of the drone."""
        R = self.R_world_camera.T @ R_world_body
        t = (p_world - self.position) @ self.R_world_camera
        return R, t


@dataclass(frozen=True)
class FlightConfig:
    """Shape of the random flights. Times in seconds, angles in degrees."""

    segment_s: tuple[float, float] = (1.2, 2.5)
    hover_p: float = 0.25
    hover_s: tuple[float, float] = (0.5, 2.0)
    approach_retreat_p: float = 0.4
    fast_turn_p: float = 0.3
    fast_turn_deg: tuple[float, float] = (90.0, 180.0)
    yaw_wander_deg: float = 45.0
    max_tilt_deg: float = 30.0
    view_margin: float = 0.15
    camera_height_m: float = 1.2
    camera_elevation_deg: float = 15.0


@dataclass(frozen=True)
class Flight:
    """Sampled flight: times [T] seconds from the start; R_world_body [T,3,3]; position [T,3]
    metres; velocity [T,3] m/s; tilt_deg [T] angle between the body z axis and the world vertical."""

    times: np.ndarray
    R_world_body: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    tilt_deg: np.ndarray


def look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """R_world_camera [3,3] of an optical frame at `position` looking at `target` with no roll."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("a camera cannot look straight up or down")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def distance_range(drone: DroneModel, K: np.ndarray, width: int) -> tuple[float, float]:
    """Camera distances (metres) at which the drone's diagonal spans the UAVA-like pixel range."""
    low_px, high_px = size_range_for(drone, width, PoseSamplingConfig())
    focal = 0.5 * (K[0, 0] + K[1, 1])
    return focal * drone.diagonal / high_px, focal * drone.diagonal / low_px


def make_rig(
    drone: DroneModel,
    cameras: int,
    K: np.ndarray,
    width: int,
    height: int,
    config: FlightConfig | None = None,
) -> tuple[list[RigCamera], np.ndarray]:
    """1..4 cameras around a common flight centre; returns (cameras, flight centre [3])."""
    if not 1 <= cameras <= len(CAMERA_AZIMUTHS_DEG):
        raise ValueError(f"a rig has 1 to {len(CAMERA_AZIMUTHS_DEG)} cameras, got {cameras}")
    config = config or FlightConfig()
    near, far = distance_range(drone, K, width)
    radius = math.sqrt(near * far)  # geometric middle: the size range is multiplicative
    elevation = math.radians(config.camera_elevation_deg)
    centre = np.array(
        [radius * math.cos(elevation), 0.0, config.camera_height_m + radius * math.sin(elevation)]
    )
    rig = []
    for i in range(cameras):
        azimuth = math.radians(180.0 + CAMERA_AZIMUTHS_DEG[i])
        offset = radius * np.array(
            [
                math.cos(elevation) * math.cos(azimuth),
                math.cos(elevation) * math.sin(azimuth),
                -math.sin(elevation),
            ]
        )
        position = centre + offset
        name = "camera" if cameras == 1 else f"camera{i}"
        rig.append(RigCamera(name, np.asarray(K, float), width, height, look_at(position, centre), position))
    return rig, centre


def sample_flight(
    drone: DroneModel,
    rig: list[RigCamera],
    seconds: float,
    rate_hz: float,
    rng: np.random.Generator,
    config: FlightConfig | None = None,
) -> Flight:
    """A random flight of `seconds` sampled at rate_hz, seen by every camera of the rig."""
    if not (seconds > 0 and rate_hz > 0 and math.isfinite(seconds) and math.isfinite(rate_hz)):
        raise UserError(f"seconds and rate must be positive, got {seconds} s at {rate_hz} Hz")
    config = config or FlightConfig()
    near, far = distance_range(drone, rig[0].K, rig[0].width)
    knots_t, knots_p, knots_yaw = [0.0], [], [rng.uniform(-math.pi, math.pi)]
    knots_p.append(_waypoint(rig, near, far, "wander", rng, config))
    while knots_t[-1] < seconds:
        kind = "wander"
        if rng.random() < config.approach_retreat_p:
            kind = "approach" if rng.random() < 0.5 else "retreat"
        duration = rng.uniform(*config.segment_s)
        yaw_step = math.radians(rng.normal(0.0, config.yaw_wander_deg))
        if rng.random() < config.fast_turn_p:
            yaw_step = math.radians(rng.uniform(*config.fast_turn_deg)) * rng.choice([-1.0, 1.0])
            duration = min(duration, 1.2)
        knots_t.append(knots_t[-1] + duration)
        knots_p.append(_waypoint(rig, near, far, kind, rng, config))
        knots_yaw.append(knots_yaw[-1] + yaw_step)
        if rng.random() < config.hover_p:  # dwell at the waypoint
            knots_t.append(knots_t[-1] + rng.uniform(*config.hover_s))
            knots_p.append(knots_p[-1])
            knots_yaw.append(knots_yaw[-1])
    times_k, points = np.array(knots_t), np.array(knots_p)
    velocities = _knot_velocities(times_k, points)
    position_spline = CubicHermiteSpline(times_k, points, velocities, axis=0)
    yaw_spline = CubicHermiteSpline(times_k, np.array(knots_yaw), np.zeros(len(knots_yaw)))
    times = np.arange(math.floor(seconds * rate_hz)) / rate_hz
    position = position_spline(times)
    velocity = position_spline(times, 1)
    acceleration = position_spline(times, 2)
    R, tilt = _attitude(acceleration, yaw_spline(times), config.max_tilt_deg)
    return Flight(times, R, position, velocity, tilt)


def _waypoint(
    rig: list[RigCamera], near: float, far: float, kind: str, rng: np.random.Generator, config: FlightConfig
) -> np.ndarray:
    """A random point in the first camera's view, at a distance set by `kind`, seen by all cameras."""
    first = rig[0]
    span = math.log(far / near)
    fractions = {"wander": (0.1, 0.9), "approach": (0.0, 0.15), "retreat": (0.85, 1.0)}
    # an approach or retreat that no other camera can see falls back to a wander waypoint
    for attempt in range(1300):
        low, high = fractions[kind if attempt < 300 else "wander"]
        distance = near * math.exp(span * rng.uniform(low, high))
        pixel = rng.uniform(config.view_margin, 1 - config.view_margin, 2) * (first.width, first.height)
        ray = np.linalg.solve(first.K, [pixel[0], pixel[1], 1.0])
        point = first.position + first.R_world_camera @ (ray / np.linalg.norm(ray) * distance)
        if all(_sees(camera, point, near * 0.7, far * 1.4, config.view_margin / 2) for camera in rig[1:]):
            return point
    raise ValueError("could not place a waypoint that every camera sees; the rig's views do not overlap")


def _sees(camera: RigCamera, point: np.ndarray, near: float, far: float, margin: float) -> bool:
    p = camera.R_world_camera.T @ (point - camera.position)
    if not near <= np.linalg.norm(p) <= far or p[2] <= 0:
        return False
    u, v, w = camera.K @ p
    x, y = u / w / camera.width, v / w / camera.height
    return margin <= x <= 1 - margin and margin <= y <= 1 - margin


def _knot_velocities(times: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Catmull-Rom velocities at the knots (zero at the ends and where the drone hovers)."""
    velocities = np.zeros_like(points)
    for i in range(1, len(points) - 1):
        before, after = points[i] - points[i - 1], points[i + 1] - points[i]
        if np.allclose(before, 0) or np.allclose(after, 0):
            continue  # start or end of a hover
        velocities[i] = (points[i + 1] - points[i - 1]) / (times[i + 1] - times[i - 1])
    return velocities


def _attitude(
    acceleration: np.ndarray, yaw: np.ndarray, max_tilt_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """R_world_body [T,3,3] with the thrust axis along (a + g), tilt limited; tilt [T] degrees."""
    thrust = acceleration + np.array([0.0, 0.0, GRAVITY])
    horizontal = thrust[:, :2]
    limit = thrust[:, 2:3] * math.tan(math.radians(max_tilt_deg))
    norm = np.linalg.norm(horizontal, axis=1, keepdims=True)
    thrust[:, :2] = horizontal * np.minimum(1.0, limit / np.maximum(norm, 1e-12))
    z_axis = thrust / np.linalg.norm(thrust, axis=1, keepdims=True)
    heading = np.stack([np.cos(yaw), np.sin(yaw), np.zeros_like(yaw)], axis=1)
    y_axis = np.cross(z_axis, heading)
    y_axis /= np.linalg.norm(y_axis, axis=1, keepdims=True)
    x_axis = np.cross(y_axis, z_axis)
    R = np.stack([x_axis, y_axis, z_axis], axis=2)
    tilt = np.degrees(np.arccos(np.clip(z_axis[:, 2], -1.0, 1.0)))
    return R, tilt
