"""FusedEstimator: V images of one drone from a calibrated rig -> one pose rig<-drone.

One batched network pass for all views (images of one size share it) through the single-camera
PoseEstimator, then multi-view PnP (drone_pose.fusion.multiview_pnp) on every view that gave a
usable single-view result, started from those views' own poses, and view gating
(drone_pose.fusion.gating) that leaves out views whose pose disagrees with the fused one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from drone_pose.fusion.gating import view_distances, worst_outlier
from drone_pose.fusion.multiview_pnp import multiview_pnp
from drone_pose.fusion.rig import camera_poses, split_extrinsics
from drone_pose.geometry.camera import project_points
from drone_pose.geometry.distortion import Distortion
from drone_pose.inference.estimator import (
    PoseEstimate,
    PoseEstimator,
    keypoint_weights,
    pose_verdicts,
    position_std,
)
from drone_pose.pnp.projection import residuals, robust_cost
from drone_pose.pnp.result import PnPResult
from drone_pose.pnp.solver import serial_when_small

# single-view verdicts whose keypoints still take part in the fusion: a pose that is valid, or
# valid but for its (depth) uncertainty, which is exactly what other views resolve
TAKING_PART = ("", "uncertain_pose")
DEFAULT_GATE_MAHALANOBIS = 5.0


@dataclass(frozen=True)
class FusedEstimate:
    """Fused poses of B groups of V views (tensors on the CPU, float64).

    R [B,3,3], t [B,3] metres: rig<-drone (p_rig = R p_drone + t); covariance [B,6,6] of
    (tx, ty, tz, rx, ry, rz) about rig axes (ROS order), scaled by the estimator's covariance
    scales divided by the fused residual variance over the views' own (CovarianceScales.apply:
    the views' disagreement already shows part of what the single-view scales stand for);
    reprojection_rms [B] px over the confident keypoints of the views used; valid [B] bool;
    reasons: per group "" when valid, else no_usable_view (no view gave a usable single-view
    result), solver_<status>, high_reprojection_error or uncertain_pose; views_used [B,V] bool;
    gated [B,V] bool: left out by view gating; view_distances [B,V]: Mahalanobis distance of each
    view's own pose from the fused pose (NaN where it cannot be judged); views: the single-view
    estimates of the B*V images (image b*V + v), camera<-drone; timings_ms: stage -> ms.
    """

    R: Tensor
    t: Tensor
    covariance: Tensor
    reprojection_rms: Tensor
    valid: Tensor
    reasons: list[str]
    views_used: Tensor
    gated: Tensor
    view_distances: Tensor
    views: PoseEstimate
    timings_ms: dict[str, float] = field(default_factory=dict)


class FusedEstimator:
    """Multi-camera pose estimation for a calibrated rig on top of a single-camera PoseEstimator.

    gate_mahalanobis: distance (not squared) beyond which a view's own pose counts as an outlier
    against the fused pose and is left out (math.inf: no gating).
    """

    def __init__(self, estimator: PoseEstimator, gate_mahalanobis: float = DEFAULT_GATE_MAHALANOBIS) -> None:
        if not gate_mahalanobis > 0:
            raise ValueError(f"gate_mahalanobis must be positive, got {gate_mahalanobis!r}")
        self.estimator = estimator
        self.gate_mahalanobis = float(gate_mahalanobis)

    def estimate(
        self,
        images: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
        K: np.ndarray | Tensor,
        cam_from_rig: np.ndarray | Tensor,
        distortion: Sequence[Distortion | None] | None = None,
    ) -> FusedEstimate:
        """Fused pose of one group, images [V,H,W,3] uint8 RGB (or a list of V images whose sizes
        may differ), or of B groups, images [B,V,H,W,3]; K [V,3,3] or [B,V,3,3]; cam_from_rig
        [V,4,4] or [B,V,4,4] (p_cam = T p_rig, metres); distortion: one (or None) per image."""
        start = time.perf_counter()
        if isinstance(images, (list, tuple)):
            views = estimate_views(self.estimator, list(images), K, distortion)
            groups = 1
        else:
            tensor = images if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
            if tensor.ndim == 4:
                tensor = tensor.unsqueeze(0)
            if tensor.ndim != 5:
                raise ValueError(
                    f"images must have shape [V, H, W, 3] or [B, V, H, W, 3], got {list(tensor.shape)}"
                )
            groups = tensor.shape[0]
            K_all = torch.as_tensor(np.asarray(K) if not isinstance(K, Tensor) else K, dtype=torch.float64)
            K_all = K_all.expand(groups, *K_all.shape[-3:]) if K_all.ndim == 3 else K_all
            views = self.estimator.estimate(tensor.flatten(0, 1), K_all.reshape(-1, 3, 3), distortion)
        network_ms = (time.perf_counter() - start) * 1e3
        fused = self.fuse(views, _grouped(K, groups, (3, 3)), _grouped(cam_from_rig, groups, (4, 4)))
        fused.timings_ms["views"] = network_ms
        fused.timings_ms["total"] = network_ms + fused.timings_ms["fusion"]
        return fused

    def fuse(self, views: PoseEstimate, K: Tensor, cam_from_rig: Tensor) -> FusedEstimate:
        """Fused poses of B groups from the single-view estimates of their B*V images (image
        b*V + v), K [B,V,3,3] and cam_from_rig [B,V,4,4]."""
        start = time.perf_counter()
        with serial_when_small(views.keypoints):
            fused = self._fuse(views, K, cam_from_rig)
        fused.timings_ms["fusion"] = (time.perf_counter() - start) * 1e3
        return fused

    def _fuse(self, views: PoseEstimate, K: Tensor, cam_from_rig: Tensor) -> FusedEstimate:
        """`fuse` without its timing."""
        thresholds = self.estimator.thresholds
        problem = _FusionProblem.of(views, K.double(), cam_from_rig.double(), self.estimator)
        groups, cameras = problem.K.shape[:2]
        taking_part = torch.tensor([r in TAKING_PART for r in views.reasons]).view(groups, cameras)
        available = taking_part.clone()
        gated = torch.zeros(groups, cameras, dtype=torch.bool)
        result, covariance = problem.solve(taking_part)
        distances = problem.distances(result, covariance)
        # Each group is judged on its own: only groups where a view disagrees with the fused pose get
        # the leave-one-out solves, and only groups that lose a view are solved again.
        pending = torch.arange(groups)
        for _ in range(cameras):
            outlier = worst_outlier(distances[pending], taking_part[pending], self.gate_mahalanobis)
            pending = pending[outlier >= 0]
            if pending.numel() == 0:
                break  # every view agrees with its fused pose
            drop = self._leave_one_out_outlier(problem, taking_part, pending)
            pending, drop = pending[drop >= 0], drop[drop >= 0]
            if pending.numel() == 0:
                break
            gated[pending, drop] = True
            taking_part[pending, drop] = False
            again, again_covariance = problem.solve(taking_part[pending], pending)
            result = _with_rows(result, pending, again)
            covariance = covariance.index_put((pending,), again_covariance)
            distances = distances.index_put((pending,), problem.distances(again, again_covariance, pending))
        distances = torch.where(available, distances, torch.full_like(distances, math.nan))
        confident = (problem.confidences >= thresholds.min_keypoint_confidence) & taking_part.unsqueeze(-1)
        rms = _fused_rms(problem, result.R, result.t, confident)
        reasons = pose_verdicts(confident.view(groups, -1), result, rms, position_std(covariance), thresholds)
        reasons = [
            reason if bool(taking_part[b].any()) else "no_usable_view" for b, reason in enumerate(reasons)
        ]
        return FusedEstimate(
            R=result.R,
            t=result.t,
            covariance=covariance,
            reprojection_rms=rms,
            valid=torch.tensor([reason == "" for reason in reasons]),
            reasons=reasons,
            views_used=taking_part,
            gated=gated,
            view_distances=distances,
            views=views,
        )

    def _leave_one_out_outlier(self, problem: _FusionProblem, taking_part: Tensor, judged: Tensor) -> Tensor:
        """The view [b] to gate next (-1: none) in the groups `judged` [b]. Each view taking part is
        compared with the pose the other views give without it, so that an outlier cannot drag the
        pose it is judged against; the largest distance beyond the threshold goes. Two views that
        disagree are symmetric: there the one with the larger single-view position variance goes."""
        cameras = taking_part.shape[1]
        count = judged.numel()
        rows = judged.repeat_interleave(cameras)
        without = taking_part[rows]
        without[torch.arange(len(rows)), torch.arange(cameras).repeat(count)] = False
        result, covariance = problem.solve(without, rows)
        own = problem.distances(result, covariance, rows).view(count, cameras, cameras)
        own = own.diagonal(dim1=-2, dim2=-1)  # view v against the pose without v
        variance = problem.covariance_views[judged, :, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1)
        tie_breaker = 1e-6 * variance / variance.nan_to_num(0.0).amax(1, keepdim=True).clamp_min(1e-300)
        return worst_outlier(own + tie_breaker.nan_to_num(0.0), taking_part[judged], self.gate_mahalanobis)


def _with_rows(result: PnPResult, rows: Tensor, update: PnPResult) -> PnPResult:
    """`result` [B] with its samples `rows` [b] replaced by those of `update` [b]."""
    return dataclasses.replace(
        result,
        **{
            name: getattr(result, name).index_put((rows,), getattr(update, name))
            for name in ("R", "t", "cost", "converged", "status", "covariance")
        },
        iterations=max(result.iterations, update.iterations),
    )


@dataclass(frozen=True)
class _FusionProblem:
    """The multi-view problems of B groups: keypoints [B,V,N,2] (undistorted), confidences [B,V,N],
    PnP weights [B,V,N], the robust reprojection cost of each view at its own pose view_costs
    [B,V] (px^2; NaN for a view without a pose), the views' own poses R_views [B,V,3,3], t_views
    [B,V,3] and covariances [B,V,6,6] (camera frames), K [B,V,3,3], cam_from_rig [B,V,4,4]."""

    keypoints: Tensor
    confidences: Tensor
    weights: Tensor
    view_costs: Tensor
    R_views: Tensor
    t_views: Tensor
    covariance_views: Tensor
    K: Tensor
    cam_from_rig: Tensor
    estimator: PoseEstimator

    @classmethod
    def of(
        cls, views: PoseEstimate, K: Tensor, cam_from_rig: Tensor, estimator: PoseEstimator
    ) -> _FusionProblem:
        groups, cameras = K.shape[:2]
        count = views.keypoints.shape[1]
        keypoints = views.keypoints if views.undistorted_keypoints is None else views.undistorted_keypoints
        confidences = views.confidences.view(groups, cameras, count)
        thresholds = estimator.thresholds
        weights = keypoint_weights(
            confidences, thresholds.min_keypoint_confidence, thresholds.keypoint_confidence_power
        )
        keypoints = keypoints.view(groups, cameras, count, 2)
        pairs = weights.unsqueeze(-1).expand(groups, cameras, count, 2).reshape(-1, count, 2)
        r = residuals(
            torch.where(pairs > 0, keypoints.reshape(-1, count, 2), 0.0),
            estimator.keypoints_3d,
            K.reshape(-1, 3, 3),
            pairs,
            views.R,
            views.t,
        )
        view_costs = robust_cost(r, thresholds.huber_px).view(groups, cameras)
        return cls(
            keypoints,
            confidences,
            weights,
            view_costs,
            views.R.view(groups, cameras, 3, 3),
            views.t.view(groups, cameras, 3),
            views.covariance.view(groups, cameras, 6, 6),
            K,
            cam_from_rig,
            estimator,
        )

    def solve(self, taking_part: Tensor, rows: Tensor | None = None) -> tuple[PnPResult, Tensor]:
        """Fused poses (and scaled covariances) of the groups `rows` (default: all) from their views
        taking part [b,V]."""
        pick = (lambda v: v) if rows is None else (lambda v: v[rows])
        result = multiview_pnp(
            pick(self.keypoints),
            self.estimator.keypoints_3d,
            pick(self.K),
            pick(self.cam_from_rig),
            pick(self.weights) * taking_part.unsqueeze(-1),
            huber=self.estimator.thresholds.huber_px,
            view_poses=(pick(self.R_views), pick(self.t_views)),
        )
        return result, self.estimator.covariance_scales.apply(
            result.covariance, self._revealed(result, taking_part, pick)
        )

    def _revealed(self, result: PnPResult, taking_part: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        """The fused residual variance 2 cost / (2 n - 6) over that of the views taking part [b,V] at
        their own poses (sum 2 cost_v / sum (2 n_v - 6)) [b]; 1 where it cannot be told."""
        points = ((pick(self.weights) > 0) & taking_part.unsqueeze(-1)).sum(-1).double()  # [b,V]
        own_costs = torch.where(taking_part, pick(self.view_costs), 0.0).sum(1)
        own = 2.0 * own_costs / torch.where(taking_part, 2.0 * points - 6.0, 0.0).sum(1)
        fused = 2.0 * result.cost.double() / (2.0 * points.sum(1) - 6.0)
        ratio = fused / own
        return torch.where(torch.isfinite(ratio) & (ratio > 0), ratio, 1.0)

    def distances(self, result: PnPResult, covariance: Tensor, rows: Tensor | None = None) -> Tensor:
        """Mahalanobis distances [b,V] of the views' own poses from fused poses of the groups `rows`."""
        pick = (lambda v: v) if rows is None else (lambda v: v[rows])
        cam_R, cam_t = split_extrinsics(pick(self.cam_from_rig))
        return view_distances(
            pick(self.R_views), pick(self.t_views), pick(self.covariance_views), cam_R, cam_t,
            result.R, result.t, covariance,
        )  # fmt: skip


def _fused_rms(problem: _FusionProblem, R: Tensor, t: Tensor, confident: Tensor) -> Tensor:
    """RMS distance [B] px between the keypoints and the model projected at fused poses R [B,3,3],
    t [B,3] over the confident [B,V,N] keypoints."""
    groups, cameras, count = problem.keypoints.shape[:3]
    R_cam, t_cam = camera_poses(R, t, *split_extrinsics(problem.cam_from_rig))
    projected, _ = project_points(
        problem.estimator.keypoints_3d,
        R_cam.reshape(-1, 3, 3),
        t_cam.reshape(-1, 3),
        problem.K.reshape(-1, 3, 3),
    )
    squared = ((projected.view(groups, cameras, count, 2) - problem.keypoints) ** 2).sum(-1)
    squared = torch.where(confident, squared, torch.zeros_like(squared))  # NaN where a view is garbage
    return torch.sqrt(squared.flatten(1).sum(1) / confident.flatten(1).sum(1).clamp_min(1))


def _grouped(values: np.ndarray | Tensor, groups: int, matrix: tuple[int, int]) -> Tensor:
    """[V,*matrix] or [B,V,*matrix] as float64 [B,V,*matrix]."""
    tensor = torch.as_tensor(
        np.asarray(values) if not isinstance(values, Tensor) else values, dtype=torch.float64
    )
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0).expand(groups, *tensor.shape)
    if tensor.ndim != 4 or tensor.shape[0] != groups or tensor.shape[2:] != matrix:
        raise ValueError(
            f"expected [V, {matrix[0]}, {matrix[1]}] or [B, V, ...] matrices, got {list(tensor.shape)}"
        )
    return tensor


def estimate_views(
    estimator: PoseEstimator,
    images: list[np.ndarray | Tensor],
    K: np.ndarray | Tensor,
    distortion: Sequence[Distortion | None] | None,
) -> PoseEstimate:
    """Single-view estimates of one group's V images in view order, one network pass per size."""
    K_all = torch.as_tensor(np.asarray(K) if not isinstance(K, Tensor) else K, dtype=torch.float64)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(index)
    parts, order = [], []
    for indices in by_size.values():
        stacked = np.stack([np.asarray(images[i]) for i in indices])
        models = None if distortion is None else [distortion[i] for i in indices]
        parts.append(estimator.estimate(stacked, K_all[indices], models))
        order.extend(indices)
    estimate = PoseEstimate.concatenate(parts) if len(parts) > 1 else parts[0]
    if order == sorted(order):
        return estimate
    inverse = torch.argsort(torch.tensor(order))
    return estimate.take(inverse)
