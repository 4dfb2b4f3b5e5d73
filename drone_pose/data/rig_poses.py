"""Multi-camera groups: one drone pose seen by the V cameras of a rig (ring, arc or stereo pair).

Each view is drawn like a single-camera sample (drone_pose.data.poses): the drone's apparent size
in the size range of its drone, its image position uniform over the image with every keypoint
inside, the camera's elevation and roll in the configured ranges. What ties the views together is
one drone orientation in the world (z up) and the cameras' azimuths around the drone, set by the
layout: "ring" spreads V cameras evenly around the drone, "arc" over a quarter circle, "stereo" is
two parallel cameras a baseline apart (the second camera is the first shifted along its x axis).
jitter (0..1) perturbs the azimuths. The rig frame has world axes (z up) and its origin at the
centroid of the cameras; extrinsics are cam_from_rig (p_cam = R p_rig + t, metres).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drone_pose.data.poses import OPTICAL_FROM_LEVEL, PoseSamplingConfig, euler_rotations, size_range_for
from drone_pose.drones import DroneModel

RIG_LAYOUTS = ("ring", "arc", "stereo")
ARC_SPAN_DEG = 90.0
MAX_AZIMUTH_JITTER_DEG = 15.0


@dataclass(frozen=True)
class RigConfig:
    """A rig: `cameras` views in `layout` (ring, arc, stereo); jitter 0..1 scales the azimuth noise
    (up to MAX_AZIMUTH_JITTER_DEG standard deviation); baseline_m: the stereo pair's baseline."""

    cameras: int = 3
    layout: str = "ring"
    jitter: float = 0.0
    baseline_m: float = 0.3

    def __post_init__(self) -> None:
        if not isinstance(self.cameras, int) or isinstance(self.cameras, bool) or self.cameras < 1:
            raise ValueError(f"rig cameras must be a positive integer, got {self.cameras!r}")
        if self.layout not in RIG_LAYOUTS:
            raise ValueError(f"rig layout must be one of {', '.join(RIG_LAYOUTS)}, got {self.layout!r}")
        if self.layout == "stereo" and self.cameras != 2:
            raise ValueError(f"a stereo rig has 2 cameras, got {self.cameras}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"rig jitter must lie in [0, 1], got {self.jitter!r}")
        if not self.baseline_m > 0:
            raise ValueError(f"stereo baseline must be positive, got {self.baseline_m!r} m")

    def azimuths_deg(self, rng: np.random.Generator) -> np.ndarray:
        """The cameras' azimuths [V] around the drone, degrees, with the layout's spacing, a random
        common rotation and the jitter."""
        if self.layout == "ring":
            spacing = 360.0 / self.cameras
        elif self.layout == "arc":
            spacing = ARC_SPAN_DEG / max(self.cameras - 1, 1)
        else:
            spacing = 0.0
        azimuths = rng.uniform(-180.0, 180.0) + spacing * np.arange(self.cameras)
        noise = rng.normal(0.0, self.jitter * MAX_AZIMUTH_JITTER_DEG, self.cameras)
        return azimuths + (noise if self.layout != "stereo" else 0.0)


@dataclass(frozen=True)
class RigGroup:
    """One drone pose in V views: R_cam [V,3,3], t_cam [V,3] (camera optical <- drone, metres);
    cam_from_rig [V,4,4]; R [3,3], t [3] (rig <- drone); tilt_deg: the drone's tilt from vertical."""

    R_cam: np.ndarray
    t_cam: np.ndarray
    cam_from_rig: np.ndarray
    R: np.ndarray
    t: np.ndarray
    tilt_deg: float


def sample_rig_group(
    drone: DroneModel,
    K: np.ndarray,
    width: int,
    height: int,
    rig: RigConfig,
    rng: np.random.Generator,
    config: PoseSamplingConfig | None = None,
) -> RigGroup:
    """One group: the drone's world orientation, then each camera's pose relative to it (size,
    image position, elevation, roll) as single-camera sampling draws them; redrawn until every
    keypoint of every view lies inside its image (config.keep_inside)."""
    config = config or PoseSamplingConfig()
    tilt = np.clip(rng.normal(0.0, config.tilt_std_deg, 2), -config.max_tilt_deg, config.max_tilt_deg)
    world_from_drone = euler_rotations(np.array([[rng.uniform(-180.0, 180.0), tilt[0], tilt[1]]]), "ZYX")[0]
    azimuths = rig.azimuths_deg(rng)
    R_cam, t_cam = [], []
    for view in range(rig.cameras):
        if rig.layout == "stereo" and view == 1:
            R_next, t_next = R_cam[0], t_cam[0] - np.array([rig.baseline_m, 0.0, 0.0])
            if not _inside(drone, K, width, height, R_next, t_next, config):
                return sample_rig_group(drone, K, width, height, rig, rng, config)
        else:
            R_next, t_next = _camera_pose(
                drone, K, width, height, world_from_drone, azimuths[view], rng, config
            )
        R_cam.append(R_next)
        t_cam.append(t_next)
    R_cam, t_cam = np.stack(R_cam), np.stack(t_cam)
    # cameras in a world frame at the drone: p_cam = R_cw p_world + t_cam, centres c = -R_cw^T t_cam
    R_cw = R_cam @ world_from_drone.T
    centres = -np.einsum("vji,vj->vi", R_cw, t_cam)
    origin = centres.mean(0)
    cam_from_rig = np.tile(np.eye(4), (rig.cameras, 1, 1))
    cam_from_rig[:, :3, :3] = R_cw
    cam_from_rig[:, :3, 3] = R_cw @ origin + t_cam
    tilt_deg = float(np.degrees(np.arccos(np.clip(world_from_drone[2, 2], -1.0, 1.0))))
    return RigGroup(R_cam, t_cam, cam_from_rig, world_from_drone, -origin, tilt_deg)


def _camera_pose(
    drone: DroneModel,
    K: np.ndarray,
    width: int,
    height: int,
    world_from_drone: np.ndarray,
    azimuth_deg: float,
    rng: np.random.Generator,
    config: PoseSamplingConfig,
    attempts: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Camera optical <- drone for a camera at `azimuth_deg` around the drone."""
    low, high = size_range_for(drone, width, config)
    level_from_world = euler_rotations(np.array([[-azimuth_deg, 0.0, 0.0]]), "ZYX")[0]
    for _ in range(attempts):
        depth = K[0, 0] * drone.diagonal / rng.uniform(low, high)
        pixel = rng.uniform([-0.5, -0.5], [width - 0.5, height - 0.5])
        t = np.linalg.solve(K, np.array([pixel[0], pixel[1], 1.0])) * depth
        elevation = rng.uniform(*config.camera_elevation_deg)
        roll = rng.normal(0.0, config.camera_roll_std_deg)
        optical_from_level = euler_rotations(np.array([[elevation, 0.0, roll]]), "XYZ")[0].T
        R = optical_from_level @ OPTICAL_FROM_LEVEL @ level_from_world @ world_from_drone
        if _inside(drone, K, width, height, R, t, config):
            return R, t
    raise ValueError("could not place a camera with every keypoint inside the image: widen the ranges")


def _inside(
    drone: DroneModel,
    K: np.ndarray,
    width: int,
    height: int,
    R: np.ndarray,
    t: np.ndarray,
    config: PoseSamplingConfig,
) -> bool:
    """Whether every keypoint of the drone at (R, t) projects inside the image (or keep_inside is off)."""
    p = drone.keypoints @ R.T + t
    if not (p[:, 2] > 0).all():
        return False
    if not config.keep_inside:
        return True
    uv = (p @ K.T)[:, :2] / p[:, 2:3]
    low, high = -0.5 + config.margin_px, np.array([width, height]) - 0.5 - config.margin_px
    return bool(((uv >= low) & (uv <= high)).all())
