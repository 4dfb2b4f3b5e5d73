"""UAVA-like pose sampling: a ground camera sees a mostly upright drone anywhere in its view.

World frame: z up. The camera looks up or down by an elevation angle and rolls slightly; the
drone has any yaw and a small roll/pitch (flight tilt). The drone's apparent size (its model
diagonal, in pixels) is drawn in a range per drone, which sets the distance; its image position
is uniform over the image. Poses are camera optical frame <- drone body frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch

from drone_pose.drones import DroneModel

# Apparent size of the model diagonal in pixels at the UAVA resolution (320x240).
SIZE_RANGE_PX = {"m2ed": (30.0, 150.0), "tello": (10.0, 60.0)}
DEFAULT_SIZE_RANGE_PX = (20.0, 120.0)
UAVA_WIDTH = 320

# optical (x right, y down, z forward) <- world (z up) for a level camera looking along world +x
OPTICAL_FROM_LEVEL = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class PoseSamplingConfig:
    """Ranges of the sampled poses. Angles in degrees; size_range_px at the UAVA width (320 px).

    tilt_std_deg: std of the drone's roll and pitch (clipped at max_tilt_deg);
    camera_elevation_deg: range of the camera's look-up angle (negative: looking down);
    keep_inside: keep only poses whose keypoints all lie inside the image (the study's preprocessing);
    False allows keypoints (and the drone) partly outside, for robustness tests.
    """

    size_range_px: tuple[float, float] | None = None
    tilt_std_deg: float = 10.0
    max_tilt_deg: float = 35.0
    camera_elevation_deg: tuple[float, float] = (-30.0, 60.0)
    camera_roll_std_deg: float = 3.0
    keep_inside: bool = True
    margin_px: float = 2.0


def euler_rotations(euler_deg: np.ndarray, convention: str) -> np.ndarray:
    """Rotation matrices [B,3,3] from intrinsic Euler angles [B,3] in degrees (roma)."""
    angles = torch.from_numpy(np.deg2rad(euler_deg))
    return roma.euler_to_rotmat(convention, angles).numpy()


def size_range_for(drone: DroneModel, width: int, config: PoseSamplingConfig) -> tuple[float, float]:
    """Apparent-size range (pixels of the model diagonal) for this drone at image width `width`."""
    low, high = config.size_range_px or SIZE_RANGE_PX.get(drone.name, DEFAULT_SIZE_RANGE_PX)
    scale = width / UAVA_WIDTH
    return low * scale, high * scale


@dataclass(frozen=True)
class PoseSamples:
    """R [B,3,3], t [B,3] metres (camera optical <- drone body); tilt_deg [B]: angle of the drone's
    up axis from the world vertical; elevation_deg [B]: the camera's look-up angle."""

    R: np.ndarray
    t: np.ndarray
    tilt_deg: np.ndarray
    elevation_deg: np.ndarray

    def take(self, keep: np.ndarray) -> PoseSamples:
        return PoseSamples(self.R[keep], self.t[keep], self.tilt_deg[keep], self.elevation_deg[keep])

    @staticmethod
    def concatenate(parts: list[PoseSamples]) -> PoseSamples:
        return PoseSamples(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("R", "t", "tilt_deg", "elevation_deg"))
        )


def sample_poses(
    drone: DroneModel,
    K: np.ndarray,
    width: int,
    height: int,
    count: int,
    rng: np.random.Generator,
    config: PoseSamplingConfig | None = None,
) -> PoseSamples:
    """count UAVA-like poses for this drone, camera K [3,3] and image size.

    With config.keep_inside, samples are redrawn until every keypoint projects inside the image.
    """
    config = config or PoseSamplingConfig()
    parts: list[PoseSamples] = []
    found = 0
    for _ in range(100):
        if found >= count:
            break
        samples = _draw(drone, K, width, height, max(2 * (count - found), 16), rng, config)
        if config.keep_inside:
            p = drone.keypoints @ samples.R.transpose(0, 2, 1) + samples.t[:, None, :]
            uv = (p @ K.T)[..., :2] / p[..., 2:3]
            low, high = -0.5 + config.margin_px, np.array([width, height]) - 0.5 - config.margin_px
            samples = samples.take(((uv >= low) & (uv <= high)).all((1, 2)) & (p[..., 2] > 0).all(1))
        parts.append(samples.take(np.arange(min(len(samples.t), count - found))))
        found += len(parts[-1].t)
    if found < count:
        raise ValueError("could not sample poses with every keypoint inside the image: widen the ranges")
    return PoseSamples.concatenate(parts)


def _draw(
    drone: DroneModel,
    K: np.ndarray,
    width: int,
    height: int,
    count: int,
    rng: np.random.Generator,
    config: PoseSamplingConfig,
) -> PoseSamples:
    low, high = size_range_for(drone, width, config)
    size_px = rng.uniform(low, high, count)
    depth = K[0, 0] * drone.diagonal / size_px
    pixel = rng.uniform([-0.5, -0.5], [width - 0.5, height - 0.5], (count, 2))
    ray = np.linalg.solve(K, np.concatenate((pixel, np.ones((count, 1))), 1).T).T
    t = ray * depth[:, None]

    tilt = np.clip(
        rng.normal(0.0, config.tilt_std_deg, (count, 2)), -config.max_tilt_deg, config.max_tilt_deg
    )
    yaw = rng.uniform(-180.0, 180.0, count)
    world_from_drone = euler_rotations(np.stack((yaw, tilt[:, 0], tilt[:, 1]), 1), "ZYX")  # yaw, pitch, roll
    elevation = rng.uniform(*config.camera_elevation_deg, count)
    camera_roll = rng.normal(0.0, config.camera_roll_std_deg, count)
    optical_from_world = euler_rotations(
        np.stack((elevation, np.zeros(count), camera_roll), 1), "XYZ"
    ).transpose(0, 2, 1)
    R = optical_from_world @ OPTICAL_FROM_LEVEL @ world_from_drone
    tilt_from_vertical = np.degrees(np.arccos(np.clip(world_from_drone[:, 2, 2], -1.0, 1.0)))
    return PoseSamples(R, t, tilt_from_vertical, elevation)


def apparent_size_px(drone: DroneModel, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Apparent size [B] of the model diagonal in pixels at the depths of t [B,3]."""
    return K[0, 0] * drone.diagonal / t[:, 2]


__all__ = ["PoseSamples", "PoseSamplingConfig", "apparent_size_px", "sample_poses", "size_range_for"]
