"""`drone-pose bench multiview`: what fusing V calibrated views costs on top of the single views.

Problems: M2ED groups drawn by the multi-camera sampler (drone_pose.data.rig_poses, ring rig,
UAVA camera) with Gaussian keypoint noise. Timed side by side in one run, per device, batch of
groups and number of views: the single-view solves of all B*V views (what the estimator does
already), multiview_pnp started from those solutions (the fusion solve the node adds), and the
whole FusedEstimator.fuse step (solve, view gating, verdicts) on the same single-view results.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drone_pose.bench.timing import machine_info, median_ms
from drone_pose.data.rig_poses import RigConfig, sample_rig_group
from drone_pose.drones import load_drone
from drone_pose.fusion.fused_estimator import FusedEstimator
from drone_pose.fusion.multiview_pnp import multiview_pnp
from drone_pose.geometry.camera import PinholeCamera
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator, keypoint_pnp, position_std
from drone_pose.nets import build_network
from drone_pose.pnp.solver import solve_pnp


def multiview_problems(groups: int, views: int, noise_px: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """x2d [G,V,N,2] px (noisy), x3d [N,3], K [V,3,3], cam_from_rig [G,V,4,4], true R [G,3,3], t [G,3]."""
    drone = load_drone("m2ed")
    K = PinholeCamera.uava().K(torch.float64).numpy()
    rng = np.random.default_rng(seed)
    samples = [
        sample_rig_group(drone, K, 320, 240, RigConfig(views, "ring", 0.5), rng) for _ in range(groups)
    ]
    R_cam = np.stack([s.R_cam for s in samples])
    t_cam = np.stack([s.t_cam for s in samples])
    p = np.einsum("gvij,nj->gvni", R_cam, drone.keypoints) + t_cam[:, :, None]
    uv = np.einsum("ij,gvnj->gvni", K, p)
    x2d = uv[..., :2] / uv[..., 2:] + rng.normal(0.0, noise_px, uv[..., :2].shape)
    as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    return {
        "x2d": as_tensor(x2d),
        "x3d": as_tensor(drone.keypoints),
        "K": as_tensor(K).expand(views, 3, 3),
        "cam_from_rig": as_tensor([s.cam_from_rig for s in samples]),
        "R": as_tensor([s.R for s in samples]),
        "t": as_tensor([s.t for s in samples]),
    }


def _view_estimates(estimator: PoseEstimator, x2d: torch.Tensor, K: torch.Tensor) -> PoseEstimate:
    """Single-view results of keypoints x2d [M,N,2] as the estimator would report them."""
    confidences = torch.ones(x2d.shape[:2], dtype=torch.float64)
    result = keypoint_pnp(x2d, confidences, estimator.keypoints_3d, K, estimator.thresholds)
    covariance = estimator.covariance_scales.apply(result.covariance)
    valid = result.converged & (position_std(covariance) <= estimator.thresholds.max_position_std_m)
    reasons = ["" if bool(v) else "uncertain_pose" for v in valid]
    return PoseEstimate(
        x2d, confidences, result.R, result.t, covariance, torch.zeros(len(x2d)), valid, reasons
    )


def run_benchmark(
    views: tuple[int, ...] = (2, 3, 4),
    batch_sizes: tuple[int, ...] = (1, 16),
    noise_px: float = 0.5,
    repeats: int = 20,
) -> dict[str, Any]:
    """Median milliseconds per call (CPU; the fusion runs where the estimator's PnP runs) and the
    fused position error against the single views'."""
    estimator = PoseEstimator(
        build_network("hrnet_lite"), load_drone("m2ed").keypoints, (320, 240), device="cpu", warm_up=False
    )
    fuser = FusedEstimator(estimator)
    rows = [_row(fuser, count, batch, noise_px, repeats) for count in views for batch in batch_sizes]
    return {
        "benchmark": "multiview",
        "noise_px": noise_px,
        "repeats": repeats,
        "machine": machine_info(),
        "rows": rows,
    }


def _row(fuser: FusedEstimator, views: int, groups: int, noise_px: float, repeats: int) -> dict[str, Any]:
    """One row: the timings and errors of `groups` groups of `views` views."""
    cpu = torch.device("cpu")
    problem = multiview_problems(groups, views, noise_px, seed=views * 1000 + groups)
    x2d, x3d, cam_from_rig = problem["x2d"], problem["x3d"], problem["cam_from_rig"]
    flat_x2d = x2d.reshape(-1, x2d.shape[2], 2)
    flat_K = problem["K"].repeat(groups, 1, 1)
    single = _view_estimates(fuser.estimator, flat_x2d, flat_K)
    starts = (single.R.view(groups, views, 3, 3), single.t.view(groups, views, 3))
    K = problem["K"].expand(groups, views, 3, 3)
    fused = fuser.fuse(single, K, cam_from_rig)
    single_error = (single.t.view(groups, views, 3) - _camera_t(problem)).norm(dim=-1)
    return {
        "views": views,
        "groups": groups,
        "single_view_solves_ms": median_ms(lambda: solve_pnp(flat_x2d, x3d, flat_K), cpu, repeats),
        "multiview_pnp_ms": median_ms(
            lambda: multiview_pnp(x2d, x3d, K, cam_from_rig, view_poses=starts), cpu, repeats
        ),
        "fuse_ms": median_ms(lambda: fuser.fuse(single, K, cam_from_rig), cpu, repeats),
        "fused_position_error_mm_median": 1e3 * float((fused.t - problem["t"]).norm(dim=-1).median()),
        "single_view_position_error_mm_median": 1e3 * float(single_error.median()),
    }


def _camera_t(problem: dict[str, torch.Tensor]) -> torch.Tensor:
    """True drone positions [G,V,3] in each camera."""
    T = problem["cam_from_rig"]
    return (T[..., :3, :3] @ problem["t"][:, None, :, None]).squeeze(-1) + T[..., :3, 3]
