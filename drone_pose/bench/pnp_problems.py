"""Synthetic PnP problems with known ground truth, for tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from drone_pose.geometry.camera import PinholeCamera, project_points
from drone_pose.geometry.rotations import geodesic_angle, random_rotations


@dataclass(frozen=True)
class PnPProblems:
    """PnP problems: x2d [B,N,2] (noisy), x3d [N,3] or [B,N,3], K [3,3], true R [B,3,3] and t [B,3]."""

    x2d: Tensor
    x3d: Tensor
    K: Tensor
    R: Tensor
    t: Tensor
    name: str


def model_points(count: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A drone-sized object model [count,3] in metres: the M2ED keypoints, plus surface-like extra points."""
    from drone_pose.drones import load_drone

    keypoints = load_drone("m2ed").keypoints_tensor(dtype)
    if count <= keypoints.shape[0]:
        return keypoints[:count]
    generator = torch.Generator().manual_seed(seed)
    extra = (
        torch.rand(count - keypoints.shape[0], 3, generator=generator, dtype=dtype) - 0.5
    ) * keypoints.new_tensor([0.32, 0.24, 0.08])
    return torch.cat((keypoints, extra))


def uava_problems(
    batch: int,
    count: int = 9,
    noise_px: float = 1.0,
    min_size_px: float = 30.0,
    max_size_px: float = 150.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PnPProblems:
    """One shared drone model seen by the UAVA camera (320x240, f = 252.7 px) at random poses.

    The drone's 0.354 m diagonal spans min_size_px..max_size_px pixels; it lies anywhere in the
    field of view with any orientation; Gaussian pixel noise of noise_px is added.
    """
    generator = torch.Generator().manual_seed(seed)
    camera = PinholeCamera.uava()
    K = camera.K(dtype)
    x3d = model_points(count, seed, dtype)
    size = min_size_px + (max_size_px - min_size_px) * torch.rand(batch, generator=generator, dtype=dtype)
    depth = camera.fx * 0.354 / size
    pixel = torch.rand(batch, 2, generator=generator, dtype=dtype) * K.new_tensor(
        [camera.width, camera.height]
    )
    t = torch.stack(
        ((pixel[:, 0] - camera.cx) / camera.fx * depth, (pixel[:, 1] - camera.cy) / camera.fy * depth, depth),
        -1,
    )
    R = random_rotations(batch, generator, dtype)
    uv, _ = project_points(x3d, R, t, K)
    return PnPProblems(
        uv + noise_px * torch.randn(uv.shape, generator=generator, dtype=dtype), x3d, K, R, t, "uava_m2ed"
    )


def generic_problems(
    batch: int, count: int = 9, noise_px: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float64
) -> PnPProblems:
    """The EPnP paper's set-up: points uniform in [-2,2]x[-2,2]x[4,8] m (camera frame), f = 800 px."""
    generator = torch.Generator().manual_seed(seed)
    K = torch.tensor([[800.0, 0.0, 320.0], [0.0, 800.0, 240.0], [0.0, 0.0, 1.0]], dtype=dtype)
    low, high = K.new_tensor([-2.0, -2.0, 4.0]), K.new_tensor([2.0, 2.0, 8.0])
    p_cam = low + (high - low) * torch.rand(batch, count, 3, generator=generator, dtype=dtype)
    R = random_rotations(batch, generator, dtype)
    t = p_cam.mean(1)
    x3d = (p_cam - t.unsqueeze(1)) @ R  # object frame: X = R^T (p - t)
    uvw = p_cam @ K.T
    uv = uvw[..., :2] / uvw[..., 2:3]
    return PnPProblems(
        uv + noise_px * torch.randn(uv.shape, generator=generator, dtype=dtype), x3d, K, R, t, "generic"
    )


def pose_errors_deg_m(R: Tensor, t: Tensor, R_gt: Tensor, t_gt: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation error [B] in degrees and translation error [B] in metres."""
    return torch.rad2deg(geodesic_angle(R, R_gt)), (t - t_gt).norm(dim=-1)
