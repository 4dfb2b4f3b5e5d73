"""View gating: a view whose own pose disagrees with the fused pose is left out of the fusion.

As robot_localization's poseN_rejection_threshold: the squared Mahalanobis distance of the view's
pose (moved into the rig frame) from the fused pose, under the sum of both covariances (a
conservative stand-in for the innovation covariance), is compared with a threshold on the
distance (not squared); views are dropped one at a time, worst first, and the rest fused again.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from drone_pose.fusion.rig import covariance_to_rig, rig_poses
from drone_pose.geometry.pose_covariance import mahalanobis_squared, pose_error_vectors


def view_distances(
    R_views: Tensor,
    t_views: Tensor,
    covariance_views: Tensor,
    cam_R: Tensor,
    cam_t: Tensor,
    R_fused: Tensor,
    t_fused: Tensor,
    covariance_fused: Tensor,
) -> Tensor:
    """Mahalanobis distances [B,V] of single-view poses from fused poses (NaN where a covariance is
    not positive definite: such a view cannot be judged).

    R_views [B,V,3,3], t_views [B,V,3], covariance_views [B,V,6,6]: cam<-drone, camera axes;
    cam_R [B,V,3,3], cam_t [B,V,3]: cam_from_rig; R_fused [B,3,3], t_fused [B,3],
    covariance_fused [B,6,6]: rig<-drone, rig axes.
    """
    batch, views = R_views.shape[:2]
    R_rig, t_rig = rig_poses(R_views, t_views, cam_R, cam_t)
    errors = pose_error_vectors(
        R_rig.reshape(-1, 3, 3),
        t_rig.reshape(-1, 3),
        R_fused.unsqueeze(1).expand(batch, views, 3, 3).reshape(-1, 3, 3),
        t_fused.unsqueeze(1).expand(batch, views, 3).reshape(-1, 3),
    )
    combined = (
        covariance_to_rig(covariance_views.double(), cam_R.double()) + covariance_fused.double()[:, None]
    )
    return mahalanobis_squared(errors, combined.reshape(-1, 6, 6)).sqrt().view(batch, views)


def worst_outlier(distances: Tensor, taking_part: Tensor, threshold: float) -> Tensor:
    """The view [B] to drop next: the largest distance above `threshold` among the views taking part
    [B,V] where at least two take part; -1 where none is to be dropped."""
    if not math.isfinite(threshold):
        return torch.full(distances.shape[:1], -1, dtype=torch.int64)
    judged = torch.where(taking_part & torch.isfinite(distances), distances, torch.full_like(distances, -1.0))
    worst_distance, worst = judged.max(1)
    drop = (worst_distance > threshold) & (taking_part.sum(1) >= 2)
    return torch.where(drop, worst, torch.full_like(worst, -1))
