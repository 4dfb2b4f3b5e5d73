"""SilhouetteRefiner: perturbed poses move back towards the truth; bad cases keep the start, with a reason."""

from __future__ import annotations

import math

import numpy as np
import roma
import torch

from drone_pose.data.poses import sample_poses
from drone_pose.data.rasterize import rasterize
from drone_pose.drones.loading import load_drone
from drone_pose.render.image_window import ImageWindow, SilhouetteMap
from drone_pose.render.silhouette_refiner import RefinementOutcome, RefinementSettings, SilhouetteRefiner

K_IMAGE = np.array([[252.7, 0.0, 160.0], [0.0, 252.7, 120.0], [0.0, 0.0, 1.0]])


def _perturbed_truth(count: int, seed: int):
    """Ground-truth poses, their masks (320x240) and starts 5 deg and 5 % of the depth away."""
    drone = load_drone("m2ed")
    rng = np.random.default_rng(seed)
    poses = sample_poses(drone, K_IMAGE, 320, 240, count, rng)
    masks = np.stack(
        [
            rasterize(drone.vertices @ R.T + t, drone.faces, K_IMAGE, 320, 240).mask
            for R, t in zip(poses.R, poses.t, strict=True)
        ]
    )
    R_true = torch.tensor(poses.R, dtype=torch.float32)
    t_true = torch.tensor(poses.t, dtype=torch.float32)
    axes = torch.nn.functional.normalize(
        torch.tensor(rng.normal(size=(count, 3)), dtype=torch.float32), dim=-1
    )
    R_start = roma.rotvec_to_rotmat(axes * math.radians(5.0)) @ R_true
    directions = torch.nn.functional.normalize(
        torch.tensor(rng.normal(size=(count, 3)), dtype=torch.float32), dim=-1
    )
    t_start = t_true + 0.05 * t_true[:, 2:] * directions
    target = SilhouetteMap(
        torch.tensor(masks, dtype=torch.float32),
        ImageWindow(torch.zeros(count, 2), torch.ones(count), 320, 240),
    )
    return drone, R_true, t_true, R_start, t_start, target


def _inputs(drone, count: int):
    keypoints = torch.zeros(count, drone.num_keypoints, 2)
    weights = torch.zeros(count, drone.num_keypoints)
    covariance = torch.eye(6).expand(count, 6, 6) * 1e-4
    return keypoints, weights, covariance


def test_ground_truth_masks_pull_perturbed_poses_back() -> None:
    count = 16
    drone, R_true, _, R_start, t_start, target = _perturbed_truth(count, seed=3)
    refiner = SilhouetteRefiner.for_drone(drone, RefinementSettings(keypoint_weight=0.0))
    keypoints, weights, covariance = _inputs(drone, count)
    K = torch.tensor(K_IMAGE, dtype=torch.float32)
    refined = refiner.refine(R_start, t_start, K, target, keypoints, weights, covariance)
    before = torch.rad2deg(roma.rotmat_geodesic_distance(R_start, R_true))
    after = torch.rad2deg(roma.rotmat_geodesic_distance(refined.R, R_true))
    assert after.median() < 0.7 * before.median(), (before, after)
    assert (refined.iou_end[refined.refined] > refined.iou_start[refined.refined]).all()
    assert refined.refined.float().mean() >= 0.75
    assert torch.isfinite(refined.R).all()
    assert torch.isfinite(refined.t).all()


def test_empty_targets_and_unusable_starts_keep_the_start() -> None:
    count = 3
    drone, _, _, R_start, t_start, target = _perturbed_truth(count, seed=4)
    probability = target.probability.clone()
    probability[0] = 0.0
    target = SilhouetteMap(probability, target.grid)
    refiner = SilhouetteRefiner.for_drone(drone, RefinementSettings(steps=5, keypoint_weight=0.0))
    keypoints, weights, covariance = _inputs(drone, count)
    usable = torch.tensor([True, False, True])
    K = torch.tensor(K_IMAGE, dtype=torch.float32)
    refined = refiner.refine(R_start, t_start, K, target, keypoints, weights, covariance, usable=usable)
    assert refined.outcome[0] == RefinementOutcome.EMPTY_SILHOUETTE
    assert refined.outcome[1] == RefinementOutcome.NOT_REFINED
    for index in (0, 1):
        torch.testing.assert_close(refined.R[index], R_start[index])
        torch.testing.assert_close(refined.t[index], t_start[index])


def test_keypoint_limit_and_covariance() -> None:
    """With true keypoints in the objective, a zero RMS limit rejects every moved pose, and a kept
    pose has a finite, symmetric, positive definite covariance."""
    count = 4
    drone, R_true, t_true, R_start, t_start, target = _perturbed_truth(count, seed=5)
    K = torch.tensor(K_IMAGE, dtype=torch.float32)
    points = drone.keypoints_tensor() @ R_true.transpose(1, 2) + t_true[:, None]
    keypoints = (points @ K.T)[..., :2] / points[..., 2:]
    weights = torch.ones(count, drone.num_keypoints)
    covariance = torch.diag(torch.tensor([1e-4, 1e-4, 1e-3, 1e-3, 1e-3, 1e-3])).expand(count, 6, 6)
    refiner = SilhouetteRefiner.for_drone(drone, RefinementSettings(steps=10))
    strict = refiner.refine(
        R_start, t_start, K, target, keypoints, weights, covariance, max_keypoint_rms_px=0.0
    )
    assert (strict.outcome == RefinementOutcome.KEYPOINTS_DRIFTED).all()
    torch.testing.assert_close(strict.R, R_start)
    refined = refiner.refine(R_start, t_start, K, target, keypoints, weights, covariance)
    assert refined.refined.any()
    kept = refined.covariance[refined.refined]
    assert torch.isfinite(kept).all()
    torch.testing.assert_close(kept, kept.transpose(1, 2))
    assert (torch.linalg.eigvalsh(kept.double()) > 0).all()
