"""Rigid poses with covariances: inversion and composition, and robust averaging of many estimates.

Poses are (R [...,3,3], t [...,3] metres), p_a = R p_b + t for a pose a<-b. Their errors and
covariances [...,6,6] follow the PnP convention (drone_pose.pnp.result): (dt, dw), the translation
error dt = t_est - t_true and the rotation error dw, a rotation vector (radians) applied on the
left, R_est = exp(dw) R_true, about the axes of frame a; ROS order (tx, ty, tz, rx, ry, rz).
Everything here is float64 and never returns NaN for unusable samples (they are masked out).

average_poses: robust averaging of N estimates of one pose (batched over P poses), in three steps:
1. a start that tolerates up to half the samples being gross outliers, with no tuning: the
   geodesic L1 median of the rotations (Weiszfeld on SO(3), Hartley et al. 2011, from the weighted
   chordal L2 mean projected onto SO(3) with roma.special_procrustes) and the geometric median of
   the translations (Weiszfeld in R^3);
2. iteratively reweighted Gauss-Newton on the information-weighted squared Mahalanobis distances
   d^2 = e^T C^-1 e of the samples' errors e = (t_i - t, log(R_i R^T)), with a Cauchy kernel on
   d^2 / k^2 (k^2: the robust variance factor, median d^2 over its chi-square median, at least 1),
   so that rotation and translation are averaged jointly with their correlation (in a relative
   camera pose the drone's rotation error moves the translation by the lever arm);
3. samples with d^2 / k^2 beyond the chi-square(6) 99.9 % quantile are rejected (counted); the
   inliers' information-weighted mean is the estimate;
4. its covariance: k_in^2 (H_in)^-1, H_in the inliers' summed information and k_in^2 their
   variance factor (at least 1: the samples' own covariances are never made smaller than they
   claim), plus the batch-means covariance of time blocks: the inliers (in time order along N)
   are cut into `time_blocks` runs of consecutive samples, each run's information-weighted mean
   is taken, and their scatter over the number of runs estimates the variance of the mean when
   errors are correlated in time. The first term alone takes the samples as independent; the
   poses of a flight are not (a network's error depends on the view, which changes slowly), and
   on synthetic flights it understated the errors 3 to 7 times (docs/experiments.md).
The L1 median alone is robust but statistically inefficient and blind to the covariances; the
Mahalanobis IRLS alone can be captured by outliers from a poor start: hence both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from drone_pose.geometry.pose_covariance import CHI2_95_6DOF, CHI2_MEDIAN
from drone_pose.geometry.rotations import axis_angle_to_matrix, matrix_to_rotation_vector

CHI2_999_6DOF = 22.457744  # chi-square(6) 99.9 % quantile
DTYPE = torch.float64


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices [...,3,3] of vectors [...,3]: skew(a) @ b = a x b."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def _blocks(top_left: Tensor, top_right: Tensor, bottom_right: Tensor) -> Tensor:
    """[...,6,6] of three [...,3,3] blocks (the bottom-left block is zero)."""
    J = top_left.new_zeros(*top_left.shape[:-2], 6, 6)
    J[..., :3, :3] = top_left
    J[..., :3, 3:] = top_right
    J[..., 3:, 3:] = bottom_right
    return J


def invert_with_covariance(R: Tensor, t: Tensor, covariance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """b<-a (R^T, -R^T t) of poses a<-b, with the covariance [...,6,6] moved to the inverse (frame b
    axes): J C J^T, J = [[-R^T, -R^T [t]x], [0, -R^T]]."""
    R_inv = R.transpose(-1, -2)
    t_inv = -(R_inv @ t.unsqueeze(-1)).squeeze(-1)
    J = _blocks(-R_inv, -R_inv @ skew(t), -R_inv)
    return R_inv, t_inv, J @ covariance @ J.transpose(-1, -2)


def compose_with_covariance(
    R_ab: Tensor, t_ab: Tensor, C_ab: Tensor, R_bc: Tensor, t_bc: Tensor, C_bc: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """a<-c from a<-b and b<-c with independent errors: covariance J_ab C_ab J_ab^T + J_bc C_bc J_bc^T,
    J_ab = [[I, -[R_ab t_bc]x], [0, I]], J_bc = blockdiag(R_ab, R_ab) (frame a axes). Leading
    dimensions broadcast."""
    batch = torch.broadcast_shapes(
        R_ab.shape[:-2], t_ab.shape[:-1], C_ab.shape[:-2], R_bc.shape[:-2], t_bc.shape[:-1]
    )
    R_ab, R_bc = R_ab.expand(*batch, 3, 3), R_bc.expand(*batch, 3, 3)
    lever = (R_ab @ t_bc.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(3, dtype=R_ab.dtype, device=R_ab.device).expand_as(R_ab)
    J_ab = _blocks(eye, -skew(lever), eye)
    J_bc = _blocks(R_ab, torch.zeros_like(R_ab), R_ab)
    covariance = J_ab @ C_ab @ J_ab.transpose(-1, -2) + J_bc @ C_bc @ J_bc.transpose(-1, -2)
    return R_ab @ R_bc, lever + t_ab, covariance


def pose_errors(R: Tensor, t: Tensor, R_ref: Tensor, t_ref: Tensor) -> Tensor:
    """Errors [...,6] of poses (R, t) from (R_ref, t_ref): (t - t_ref, log(R R_ref^T))."""
    rotation = matrix_to_rotation_vector(R @ R_ref.transpose(-1, -2))
    return torch.cat([t - t_ref, rotation], dim=-1)


def information(covariance: Tensor, usable: Tensor) -> tuple[Tensor, Tensor]:
    """Information matrices [...,6,6] (inverse covariances, zero where not usable) and the usable
    mask [...] narrowed to finite, positive-definite covariances."""
    finite = torch.isfinite(covariance).flatten(-2).all(-1)
    eye = torch.eye(6, dtype=covariance.dtype, device=covariance.device)
    safe = torch.where((usable & finite)[..., None, None], covariance, eye)
    safe = 0.5 * (safe + safe.transpose(-1, -2))
    factor, status = torch.linalg.cholesky_ex(safe)
    usable = usable & finite & (status == 0)
    factor = torch.where(usable[..., None, None], factor, eye)
    inverse = torch.cholesky_inverse(factor)
    return torch.where(usable[..., None, None], inverse, torch.zeros_like(inverse)), usable


def weighted_tangent_mean(
    R: Tensor, t: Tensor, info: Tensor, weights: Tensor, R0: Tensor, t0: Tensor, iterations: int = 5
) -> tuple[Tensor, Tensor, Tensor]:
    """Gauss-Newton minimiser (R [...,3,3], t [...,3]) of sum_i w_i e_i^T info_i e_i over samples
    R [...,N,3,3], t [...,N,3], info [...,N,6,6], weights [...,N] >= 0, from (R0, t0); also the summed
    weighted information H [...,6,6]. Where H is singular the start is returned unchanged."""
    w_info = weights[..., None, None] * info
    H = w_info.sum(-3)
    eye = torch.eye(6, dtype=H.dtype, device=H.device)
    factor, status = torch.linalg.cholesky_ex(torch.where(torch.isfinite(H), H, eye))
    solvable = status == 0
    factor = torch.where(solvable[..., None, None], factor, eye)
    for _ in range(iterations):
        errors = pose_errors(R, t, R0.unsqueeze(-3), t0.unsqueeze(-2))
        gradient = (w_info @ errors.unsqueeze(-1)).sum(-3)
        step = torch.cholesky_solve(gradient, factor).squeeze(-1)
        step = torch.where(solvable[..., None], step, torch.zeros_like(step))
        t0 = t0 + step[..., :3]
        R0 = axis_angle_to_matrix(step[..., 3:]) @ R0
    return R0, t0, H


def rotation_l1_median(R: Tensor, weights: Tensor, iterations: int = 50) -> Tensor:
    """Weighted geodesic L1 median [...,3,3] of rotations R [...,N,3,3] (weights [...,N] >= 0):
    Weiszfeld on SO(3) from the weighted chordal mean; identity where every weight is 0."""
    mean = (weights[..., None, None] * R).sum(-3)
    none = weights.sum(-1) <= 0
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    mean = torch.where(none[..., None, None], eye.expand_as(mean), mean)
    estimate = roma.special_procrustes(mean)
    for _ in range(iterations):
        v = matrix_to_rotation_vector(R @ estimate.unsqueeze(-3).transpose(-1, -2))
        inverse_distance = weights / v.norm(dim=-1).clamp_min(1e-12)
        total = inverse_distance.sum(-1, keepdim=True).clamp_min(1e-300)
        step = (inverse_distance.unsqueeze(-1) * v).sum(-2) / total
        estimate = axis_angle_to_matrix(step) @ estimate
        if float(step.norm(dim=-1).max()) < 1e-12:
            break
    return estimate


def geometric_median(x: Tensor, weights: Tensor, iterations: int = 50) -> Tensor:
    """Weighted geometric median [...,D] of points x [...,N,D] (weights [...,N] >= 0): Weiszfeld from
    the weighted mean; zero where every weight is 0."""
    estimate = (weights.unsqueeze(-1) * x).sum(-2) / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    for _ in range(iterations):
        inverse_distance = weights / (x - estimate.unsqueeze(-2)).norm(dim=-1).clamp_min(1e-12)
        total = inverse_distance.sum(-1, keepdim=True).clamp_min(1e-300)
        updated = (inverse_distance.unsqueeze(-1) * x).sum(-2) / total
        moved = float((updated - estimate).norm(dim=-1).max())
        estimate = updated
        if moved < 1e-12:
            break
    return estimate


@dataclass(frozen=True)
class AveragingConfig:
    """Settings of average_poses: kernel_scale, the Cauchy scale c^2 on d^2 / k^2 (default the
    chi-square(6) 95 % quantile); outlier_chi2, the rejection threshold on d^2 / k^2; min_inliers,
    the fewest inliers an averaged pose needs to count as estimated; iterations of the reweighted
    Gauss-Newton and of each Weiszfeld start; time_blocks, the runs of consecutive inliers of the
    batch-means covariance (fewer when there are under block_inliers inliers per run; none below
    min_time_blocks runs; time_blocks 0: samples taken as independent)."""

    kernel_scale: float = CHI2_95_6DOF
    outlier_chi2: float = CHI2_999_6DOF
    min_inliers: int = 3
    iterations: int = 20
    weiszfeld_iterations: int = 50
    time_blocks: int = 10
    block_inliers: int = 5
    min_time_blocks: int = 4

    def __post_init__(self) -> None:
        for name in ("kernel_scale", "outlier_chi2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("min_inliers", "iterations", "weiszfeld_iterations", "block_inliers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.time_blocks < 0:
            raise ValueError(f"time_blocks must be 0 (none) or positive, got {self.time_blocks!r}")
        if self.time_blocks != 0 and not 2 <= self.min_time_blocks <= self.time_blocks:
            raise ValueError(
                f"need 2 <= min_time_blocks <= time_blocks, got {self.min_time_blocks} and {self.time_blocks}"
            )


@dataclass(frozen=True)
class AveragedPoses:
    """P averaged poses: R [P,3,3], t [P,3] (identity and zero where not estimated); covariance
    [P,6,6] (zero where not estimated); samples, inliers, outliers [P] int64 (usable samples, and
    how the robust fit split them); variance_factor [P] (k_in^2 >= 1: how much the samples
    scatter beyond their own covariances); time_blocks [P] int64 (runs in the batch-means
    covariance, 0: none); estimated [P] bool (at least min_inliers inliers)."""

    R: Tensor
    t: Tensor
    covariance: Tensor
    samples: Tensor
    inliers: Tensor
    outliers: Tensor
    variance_factor: Tensor
    time_blocks: Tensor
    estimated: Tensor


def average_poses(
    R: Tensor, t: Tensor, covariance: Tensor, usable: Tensor, config: AveragingConfig | None = None
) -> AveragedPoses:
    """Robust averages of P poses from N estimates each (module docstring).

    R [P,N,3,3], t [P,N,3], covariance [P,N,6,6] (the estimates' error covariances, convention
    above), usable [P,N] bool; N in time order (the batch-means covariance cuts it into runs; the
    estimate itself does not depend on the order). Unusable samples (and those with a non-finite
    or non-positive-definite covariance, or a non-finite pose) are ignored and may hold anything.
    """
    config = config or AveragingConfig()
    R, t, covariance = R.to(DTYPE), t.to(DTYPE), covariance.to(DTYPE)
    finite = torch.isfinite(R).flatten(-2).all(-1) & torch.isfinite(t).all(-1)
    info, usable = information(covariance, usable.bool() & finite)
    eye = torch.eye(3, dtype=DTYPE, device=R.device)
    R = torch.where(usable[..., None, None], R, eye)
    t = torch.where(usable[..., None], t, torch.zeros_like(t))
    weights = usable.to(DTYPE)

    # 1. robust start: L1 medians, each sample weighted by 1 / its standard deviation
    cov_diagonal = torch.where(
        usable[..., None], covariance.diagonal(dim1=-2, dim2=-1), torch.ones_like(t[..., :1])
    )
    rotation_scale = cov_diagonal[..., 3:].sum(-1).clamp_min(1e-30).rsqrt()
    translation_scale = cov_diagonal[..., :3].sum(-1).clamp_min(1e-30).rsqrt()
    R0 = rotation_l1_median(R, weights * rotation_scale, config.weiszfeld_iterations)
    t0 = geometric_median(t, weights * translation_scale, config.weiszfeld_iterations)

    # 2. reweighted Gauss-Newton with a Cauchy kernel on the scaled squared Mahalanobis distances
    for _ in range(config.iterations):
        squared = _squared_distances(R, t, info, R0, t0)
        factor = _variance_factor(squared, usable)
        robust = weights / (1.0 + squared / (factor[..., None] * config.kernel_scale))
        R0, t0, _ = weighted_tangent_mean(R, t, info, robust, R0, t0, iterations=1)

    # 3. hard rejection, then the inliers' information-weighted mean and its covariance
    squared = _squared_distances(R, t, info, R0, t0)
    factor = _variance_factor(squared, usable)
    inlier = usable & (squared <= factor[..., None] * config.outlier_chi2)
    R0, t0, H = weighted_tangent_mean(R, t, info, inlier.to(DTYPE), R0, t0, iterations=3)
    squared = _squared_distances(R, t, info, R0, t0)
    count = inlier.sum(-1)
    mean_squared = torch.where(inlier, squared, torch.zeros_like(squared)).sum(-1) / (
        6.0 * count.clamp_min(1)
    )
    inlier_factor = (mean_squared * count / (count - 1).clamp_min(1)).clamp_min(1.0)
    blocks, block_covariance = _batch_means(R, t, info, inlier, R0, t0, config)
    covariance_mean = inlier_factor[..., None, None] * _safe_inverse(H) + block_covariance
    estimated = (count >= config.min_inliers) & torch.isfinite(covariance_mean).flatten(-2).all(-1)
    return AveragedPoses(
        R=torch.where(estimated[..., None, None], R0, eye),
        t=torch.where(estimated[..., None], t0, torch.zeros_like(t0)),
        covariance=torch.where(
            estimated[..., None, None], covariance_mean, torch.zeros_like(covariance_mean)
        ),
        samples=usable.sum(-1),
        inliers=count,
        outliers=usable.sum(-1) - count,
        variance_factor=inlier_factor,
        time_blocks=torch.where(estimated, blocks, torch.zeros_like(blocks)),
        estimated=estimated,
    )


def _batch_means(
    R: Tensor, t: Tensor, info: Tensor, inlier: Tensor, R0: Tensor, t0: Tensor, config: AveragingConfig
) -> tuple[Tensor, Tensor]:
    """Runs [...] and the batch-means covariance [...,6,6] of the mean (R0, t0): the inliers cut
    into M runs of consecutive samples (M = min(time_blocks, inliers // block_inliers)), each run's
    information-weighted mean error m_b, and sum_b (m_b - mean)(m_b - mean)^T / (M (M - 1)); zero
    where M < min_time_blocks."""
    count = inlier.sum(-1)
    if config.time_blocks == 0:
        return torch.zeros_like(count), info.new_zeros(*count.shape, 6, 6)
    runs = torch.clamp(count // config.block_inliers, max=config.time_blocks)
    runs = torch.where(runs >= config.min_time_blocks, runs, torch.zeros_like(runs))
    rank = inlier.long().cumsum(-1) - 1
    block = ((rank * runs[..., None]) // count.clamp_min(1)[..., None]).clamp(0, config.time_blocks - 1)
    member = inlier & (runs[..., None] > 0)
    one_hot = torch.nn.functional.one_hot(block, config.time_blocks).to(DTYPE) * member[..., None].to(DTYPE)
    errors = pose_errors(R, t, R0.unsqueeze(-3), t0.unsqueeze(-2))
    H_b = torch.einsum("...nm,...nij->...mij", one_hot, info)
    g_b = torch.einsum("...nm,...nij,...nj->...mi", one_hot, info, errors)
    used = one_hot.sum(-2) > 0  # [..., M]
    eye = torch.eye(6, dtype=DTYPE, device=R.device)
    factor, status = torch.linalg.cholesky_ex(torch.where(used[..., None, None], H_b, eye))
    used &= status == 0
    factor = torch.where(used[..., None, None], factor, eye)
    means = torch.cholesky_solve(g_b.unsqueeze(-1), factor).squeeze(-1)
    means = torch.where(used[..., None], means, torch.zeros_like(means))
    n = used.sum(-1).to(DTYPE)
    centre = means.sum(-2, keepdim=True) / n.clamp_min(1)[..., None, None]
    centred = torch.where(used[..., None], means - centre, torch.zeros_like(means))
    scatter = centred.transpose(-1, -2) @ centred / (n * (n - 1)).clamp_min(1)[..., None, None]
    enough = n >= config.min_time_blocks
    return (
        torch.where(enough, runs, torch.zeros_like(runs)),
        torch.where(enough[..., None, None], scatter, torch.zeros_like(scatter)),
    )


def _squared_distances(R: Tensor, t: Tensor, info: Tensor, R0: Tensor, t0: Tensor) -> Tensor:
    """e^T info e [...,N] of the samples' errors from the estimate (R0 [...,3,3], t0 [...,3])."""
    errors = pose_errors(R, t, R0.unsqueeze(-3), t0.unsqueeze(-2)).unsqueeze(-1)
    return (errors.transpose(-1, -2) @ info @ errors).squeeze(-1).squeeze(-1).clamp_min(0.0)


def _variance_factor(squared: Tensor, usable: Tensor) -> Tensor:
    """k^2 [...]: the median squared distance of the usable samples over the chi-square(6) median,
    at least 1 (1 where there are none)."""
    masked = torch.where(usable, squared, torch.full_like(squared, math.nan))
    median = masked.nanmedian(dim=-1).values
    median = torch.where(torch.isfinite(median), median, torch.zeros_like(median))
    return (median / CHI2_MEDIAN[6]).clamp_min(1.0)


def _safe_inverse(H: Tensor) -> Tensor:
    """Inverse [...,6,6] of symmetric positive-definite H; inf where H is singular."""
    eye = torch.eye(6, dtype=H.dtype, device=H.device)
    factor, status = torch.linalg.cholesky_ex(torch.where(torch.isfinite(H), H, eye))
    ok = status == 0
    inverse = torch.cholesky_inverse(torch.where(ok[..., None, None], factor, eye))
    return torch.where(ok[..., None, None], inverse, torch.full_like(inverse, math.inf))
