"""How far a pose covariance can be trusted, and the variance scales that make it trustworthy.

PnP reports the covariance of (tx, ty, tz, rx, ry, rz) (metres; rotation vector in radians applied
on the left, about the camera axes) from its own residuals. With 9 keypoints that estimate has
12 degrees of freedom and assumes independent keypoint errors, so a network whose keypoint errors
are correlated, or larger than its residuals show, gets an overconfident covariance. Comparing
the errors of poses against ground truth with their covariances (squared Mahalanobis distances,
chi-square distributed when the covariance is right) measures that, and one variance factor for
the translation block and one for the rotation block, fitted on validation data, corrects it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from drone_pose.geometry.rotations import matrix_to_rotation_vector

# chi-square quantiles: medians for 3 and 6 degrees of freedom, 95 % for 6
CHI2_MEDIAN = {3: 2.365974, 6: 5.348121}
CHI2_95_6DOF = 12.591587


def pose_error_vectors(R_pred: Tensor, t_pred: Tensor, R_true: Tensor, t_true: Tensor) -> Tensor:
    """Errors [B,6] in the covariance's parametrisation: (t_pred - t_true) [B,3] metres, then the
    rotation vector [B,3] (radians) of R_pred R_true^T. R [B,3,3], t [B,3] camera <- drone."""
    rotation = matrix_to_rotation_vector(R_pred.double() @ R_true.double().transpose(-1, -2))
    return torch.cat([t_pred.double() - t_true.double(), rotation], dim=-1)


def mahalanobis_squared(errors: Tensor, covariance: Tensor) -> Tensor:
    """e^T C^-1 e [B] for errors [B,D] and covariances [B,D,D]; NaN where C is not positive definite
    (the solver reports a zero covariance for a singular problem)."""
    factor, info = torch.linalg.cholesky_ex(covariance.double())
    usable = (info == 0) & torch.isfinite(factor).flatten(1).all(1)
    factor = torch.where(usable[:, None, None], factor, torch.eye(errors.shape[-1], dtype=factor.dtype))
    whitened = torch.linalg.solve_triangular(factor, errors.double().unsqueeze(-1), upper=False)
    squared = whitened.squeeze(-1).pow(2).sum(-1)
    return torch.where(usable & torch.isfinite(squared), squared, torch.full_like(squared, math.nan))


@dataclass(frozen=True)
class CovarianceScales:
    """Variance factors for the translation and rotation blocks of a pose covariance (1: as PnP
    reports it); samples: poses they were fitted on (0: not fitted)."""

    translation: float = 1.0
    rotation: float = 1.0
    samples: int = 0

    def __post_init__(self) -> None:
        for name in ("translation", "rotation"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"pose covariance {name} scale must be a positive number, got {value!r}")

    def apply(self, covariance: Tensor, revealed: Tensor | None = None) -> Tensor:
        """D C D for covariances [B,6,6] with D = diag(sqrt(translation) x3, sqrt(rotation) x3).

        The factors stand for keypoint errors that a single view's residuals cannot show (errors
        shared by one image's keypoints move its pose instead). revealed [B] >= 1: how much larger
        the residual variance behind C is than the views' own (a multi-view fit, where the views'
        disagreement shows such errors as residuals): each factor is divided by it, never below 1,
        so that the same error is not counted twice.
        """
        factors = covariance.new_tensor([self.translation] * 3 + [self.rotation] * 3)
        if revealed is not None:
            factors = (factors / revealed.to(covariance.dtype).clamp_min(1.0)[:, None]).clamp_min(1.0)
        root = factors.sqrt()
        return covariance * root[..., :, None] * root[..., None, :]

    def to_dict(self) -> dict[str, Any]:
        return {"translation": self.translation, "rotation": self.rotation, "samples": self.samples}

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> CovarianceScales:
        """Scales from a checkpoint's pose_covariance entry; None: scales of 1."""
        if spec is None:
            return cls()
        return cls(float(spec["translation"]), float(spec["rotation"]), int(spec.get("samples", 0)))


def fit_covariance_scales(errors: Tensor, covariance: Tensor) -> CovarianceScales:
    """Scales that put the median squared Mahalanobis distance of each block at the chi-square
    median (3 degrees of freedom): robust to the few gross failures no Gaussian describes.
    errors [B,6] (pose_error_vectors), covariance [B,6,6]; poses without a positive-definite
    covariance are left out; none left: scales of 1."""
    scales = []
    counts = []
    for block in (slice(0, 3), slice(3, 6)):
        squared = mahalanobis_squared(errors[:, block], covariance[:, block, block])
        squared = squared[torch.isfinite(squared)]
        counts.append(int(squared.numel()))
        median = float(squared.median()) if squared.numel() else math.nan
        scales.append(median / CHI2_MEDIAN[3] if math.isfinite(median) and median > 0 else 1.0)
    return CovarianceScales(scales[0], scales[1], min(counts))


def covariance_consistency(errors: Tensor, covariance: Tensor) -> dict[str, float]:
    """How well covariances [B,6,6] describe errors [B,6]: covariance_ratio, the median squared
    Mahalanobis distance over its chi-square median (1 when calibrated, > 1 overconfident), and
    covariance_cover95, the percentage of poses inside their 95 % ellipsoid (95 when calibrated);
    poses without a positive-definite covariance count as outside."""
    squared = mahalanobis_squared(errors, covariance)
    finite = squared[torch.isfinite(squared)]
    ratio = float(finite.median()) / CHI2_MEDIAN[6] if finite.numel() else math.nan
    inside = torch.isfinite(squared) & (squared <= CHI2_95_6DOF)
    return {
        "covariance_ratio": ratio,
        "covariance_cover95": 100.0 * float(inside.double().mean()) if len(squared) else math.nan,
    }
