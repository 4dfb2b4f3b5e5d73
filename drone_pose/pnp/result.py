"""The result of a batched PnP solve."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import Tensor


class PnPStatus(enum.IntEnum):
    """Per-sample outcome of `solve_pnp` (the `status` tensor holds these values)."""

    CONVERGED = 0
    NOT_CONVERGED = 1  # iteration limit reached before the step and cost tolerances
    NON_FINITE_INPUT = 2  # NaN or inf in x2d, x3d or the weights
    DEGENERATE_POINTS = 3  # fewer than 4 weighted points, or the 3D points are collinear
    BEHIND_CAMERA = 4  # the best pose puts a weighted point at or behind the camera plane
    SOLVER_FAILURE = 5  # a non-finite cost or a singular system at the optimum
    NO_USABLE_VIEW = 6  # multi-view PnP: no view has 4 weighted, non-collinear keypoints


@dataclass(frozen=True)
class PnPResult:
    """Poses camera<-object and their quality.

    R [B,3,3], t [B,3] metres: always finite (identity and zero where the input was unusable).
    cost [B]: 0.5 * sum of squared (weighted, robustified) reprojection residuals, pixels^2.
    converged [B] bool: status == CONVERGED. status [B] int64: PnPStatus values.
    covariance [B,6,6]: of (tx, ty, tz, rx, ry, rz), rotation as a small rotation vector applied
    on the left (about camera axes), the ROS PoseWithCovariance order; inverse Gauss-Newton Hessian
    scaled by the residual variance 2 cost / (2N - 6). iterations: LM iterations run for the batch.
    """

    R: Tensor
    t: Tensor
    cost: Tensor
    converged: Tensor
    status: Tensor
    covariance: Tensor
    iterations: int = 0
