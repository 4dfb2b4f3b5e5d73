"""One scoring path for `drone-pose eval` (dataset splits) and `drone-pose eval-bag` (rosbags).

Both hand the estimator's outputs and the ground truth of the same frames to `score_estimates`,
so a frame scores the same whichever file it came from: the papers' table over every frame, the
same table over the frames the tracker would publish (valid ones), what the validity flag is
worth, how well the published covariance describes the errors, keypoint errors over the in-image
keypoints, and the table per bin of the drone's apparent size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drone_pose.drones import DroneModel
from drone_pose.geometry.camera import keypoints_in_image
from drone_pose.geometry.metrics import (
    PoseErrors,
    pose_errors,
    summarize_by_size,
    summarize_errors,
    validity_metrics,
)
from drone_pose.geometry.pose_covariance import covariance_consistency, pose_error_vectors
from drone_pose.inference.estimator import PoseEstimate


@dataclass(frozen=True)
class Scores:
    """The scores of S frames.

    metrics: the papers' columns (NPE ratio, AD radians, the rest percent) plus valid_fraction,
    valid_ACC5, ACC5_valid_recall, zoomed_fraction, covariance_ratio, covariance_cover95,
    keypoint_px and keypoint_px_median; metrics_valid: the papers' columns over the valid frames
    only ({} when none is valid); by_size: summarize_by_size rows; samples: per-frame columns for
    samples.csv (distance_m, size_px, rotation_deg, translation_cm, add_m, proj_px, valid);
    keypoint_errors_px [S,K] (NaN for keypoints outside the image); errors: the per-frame errors.
    """

    metrics: dict[str, float]
    metrics_valid: dict[str, float]
    by_size: list[dict[str, Any]]
    samples: dict[str, np.ndarray]
    keypoint_errors_px: Tensor
    errors: PoseErrors


def score_estimates(
    drone: DroneModel,
    estimate: PoseEstimate,
    R_gt: Tensor,
    t_gt: Tensor,
    K: Tensor,
    keypoints_gt: Tensor,
    image_sizes: Tensor,
) -> Scores:
    """Scores of the S estimates of `estimate` (the estimator's output for S frames, on the CPU)
    against their ground truth: R_gt [S,3,3], t_gt [S,3] metres (camera optical <- drone body),
    intrinsics K [S,3,3], keypoints_gt [S,K,2] px (the model keypoints projected at the true pose),
    image_sizes [S,2] (width, height) px: keypoints outside their image are not scored.
    """
    valid, keypoints, covariance = estimate.valid, estimate.keypoints, estimate.covariance
    zoomed = estimate.zoomed if estimate.zoomed is not None else torch.zeros_like(valid, dtype=torch.bool)
    R, t, R_gt, t_gt, K = (x.double() for x in (estimate.R, estimate.t, R_gt, t_gt, K))
    x3d = torch.tensor(drone.keypoints, dtype=torch.float64)
    errors = pose_errors(R, t, R_gt, t_gt, x3d, K)
    metrics = summarize_errors(errors, drone.diagonal)
    valid = valid.bool()
    metrics.update(validity_metrics(valid, errors.accuracy(5.0)))
    metrics["zoomed_fraction"] = zoomed.double().mean().item() if len(zoomed) else 0.0
    metrics.update(covariance_consistency(pose_error_vectors(R, t, R_gt, t_gt), covariance.double()))

    keypoints_gt = keypoints_gt.double()
    inside = keypoints_in_image(keypoints_gt, image_sizes[:, None, 0], image_sizes[:, None, 1])
    distance = (keypoints.double() - keypoints_gt).norm(dim=-1)
    keypoint_errors = torch.where(inside, distance, torch.full_like(distance, float("nan")))
    metrics["keypoint_px"] = keypoint_errors.nanmean().item()
    metrics["keypoint_px_median"] = keypoint_errors.nanmedian().item()  # the mean is ruled by gross errors

    metrics_valid = summarize_errors(errors.select(valid), drone.diagonal) if bool(valid.any()) else {}
    size_px = K[:, 0, 0] * drone.diagonal / t_gt[:, 2]  # apparent model diagonal
    by_size = summarize_by_size(errors, size_px, drone.diagonal, keypoint_errors_px=keypoint_errors)
    samples = {
        "distance_m": t_gt.norm(dim=-1).numpy(),
        "size_px": size_px.numpy(),
        "rotation_deg": np.degrees(errors.rotation_rad.numpy()),
        "translation_cm": 100.0 * errors.translation_m.numpy(),
        "add_m": errors.add_m.numpy(),
        "proj_px": errors.proj_px.numpy(),
        "valid": valid.int().numpy(),
    }
    return Scores(metrics, metrics_valid, by_size, samples, keypoint_errors, errors)
