"""Keypoint losses through the PnP pose (the reproduction study, section 3.1).

With predicted keypoints x [B,N,2] (pixels), the pose z = PnP(x) and ground-truth keypoints x*:
- l_proj = ||pi(z | X, K) - x*||^2: the estimated pose must reproject onto the true keypoints;
- l_reg  = ||x - pi(z | X, K)||^2: predicted keypoints must agree with the pose's reprojection.
Both are summed over keypoints and coordinates (pixels^2) and averaged over the batch.
"""

from __future__ import annotations

from torch import Tensor

from drone_pose.geometry.camera import project_points


def projection_loss(R: Tensor, t: Tensor, x3d: Tensor, K: Tensor, x2d_target: Tensor) -> Tensor:
    """l_proj []: squared distance of keypoints reprojected with R [B,3,3], t [B,3] to x2d_target [B,N,2]."""
    reprojected, _ = project_points(x3d, R, t, K)
    return ((reprojected - x2d_target) ** 2).sum((-1, -2)).mean()


def regression_loss(x2d_pred: Tensor, R: Tensor, t: Tensor, x3d: Tensor, K: Tensor) -> Tensor:
    """l_reg: squared distance [] between predicted keypoints x2d_pred [B,N,2] and the pose's reprojection."""
    reprojected, _ = project_points(x3d, R, t, K)
    return ((x2d_pred - reprojected) ** 2).sum((-1, -2)).mean()
