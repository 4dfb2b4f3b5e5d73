"""Multi-view PnP: one drone pose rig<-drone from the keypoints seen by V calibrated cameras.

The cost is the sum over views of the single-view robust reprojection cost (drone_pose.pnp) of
the camera poses the rig pose implies. Its derivatives w.r.t. the rig pose step are those of the
views mapped through A_v = blockdiag(R_v, R_v) (drone_pose.fusion.rig): gradient sum A_v^T g_v
and Hessians sum A_v^T H_v A_v, exactly (a rig step is a camera step, composition included), so
the batched damped-Newton solver of drone_pose.pnp runs unchanged on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drone_pose.fusion.rig import camera_poses, rig_poses, split_extrinsics, step_map, validate_extrinsics
from drone_pose.geometry.camera import validate_intrinsics
from drone_pose.pnp.epnp import epnp_start
from drone_pose.pnp.projection import MIN_POINTS, camera_cost_derivatives, residuals_and_jacobian
from drone_pose.pnp.result import PnPResult, PnPStatus
from drone_pose.pnp.solver import (
    COMPUTE_DTYPE,
    _degenerate,
    _safe_problem,
    final_result,
    init_start,
    levenberg_marquardt,
    serial_when_small,
)


def broadcast_multiview(
    x2d: Tensor, x3d: Tensor, K: Tensor, cam_from_rig: Tensor, weights: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Check shapes and expand to x2d [B,V,N,2], x3d [B,N,3], K [B,V,3,3], cam_from_rig [B,V,4,4]
    and weights [B,V,N,2]. Raises ValueError for malformed shapes, N < 4, invalid intrinsics or
    extrinsics that are not rigid transforms."""
    if x2d.ndim != 4 or x2d.shape[-1] != 2:
        raise ValueError(f"x2d must have shape [B, V, N, 2], got {list(x2d.shape)}")
    batch, views, count = x2d.shape[:3]
    if count < MIN_POINTS:
        raise ValueError(f"multi-view PnP needs at least {MIN_POINTS} model points, got {count}")
    if views < 1:
        raise ValueError("multi-view PnP needs at least one view")
    if x3d.ndim == 2:
        x3d = x3d.unsqueeze(0)
    if x3d.ndim != 3 or x3d.shape[1:] != (count, 3) or x3d.shape[0] not in (1, batch):
        raise ValueError(f"x3d must have shape [N, 3] or [B, N, 3] with N = {count}, got {list(x3d.shape)}")
    if K.ndim == 3:
        K = K.unsqueeze(0)
    if K.ndim != 4 or K.shape[1:] != (views, 3, 3) or K.shape[0] not in (1, batch):
        raise ValueError(f"K must have shape [V, 3, 3] or [B, V, 3, 3] with V = {views}, got {list(K.shape)}")
    validate_intrinsics(K.reshape(-1, 3, 3))
    if cam_from_rig.ndim == 3:
        cam_from_rig = cam_from_rig.unsqueeze(0)
    if cam_from_rig.ndim != 4 or cam_from_rig.shape[1] != views or cam_from_rig.shape[0] not in (1, batch):
        raise ValueError(
            "cam_from_rig must have shape [V, 4, 4] or [B, V, 4, 4] with V = "
            f"{views}, got {list(cam_from_rig.shape)}"
        )
    validate_extrinsics(cam_from_rig)
    if weights is None:
        weights = x2d.new_ones(batch, views, count, 2)
    elif weights.shape == (batch, views, count):
        weights = weights.unsqueeze(-1).expand(batch, views, count, 2)
    elif weights.shape != (batch, views, count, 2):
        raise ValueError(f"weights must have shape [B, V, N] or [B, V, N, 2], got {list(weights.shape)}")
    return (
        x2d,
        x3d.expand(batch, count, 3),
        K.expand(batch, views, 3, 3),
        cam_from_rig.expand(batch, views, 4, 4),
        weights,
    )


def _flatten_views(
    x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor, R_cam: Tensor, t_cam: Tensor
) -> tuple[Tensor, ...]:
    """The B*V single-view problems of a multi-view batch (x3d shared across views, stride 0)."""
    batch, views, count = x2d.shape[:3]
    x3d_views = x3d.unsqueeze(1).expand(batch, views, count, 3).reshape(batch * views, count, 3)
    return (
        x2d.reshape(batch * views, count, 2),
        x3d_views,
        K.reshape(batch * views, 3, 3),
        weights.reshape(batch * views, count, 2),
        R_cam.reshape(batch * views, 3, 3),
        t_cam.reshape(batch * views, 3),
    )


def multiview_cost_derivatives(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor,
    cam_R: Tensor,
    cam_t: Tensor,
    R: Tensor,
    t: Tensor,
    huber: float | None,
    exact: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """`cost_derivatives` of the multi-view cost w.r.t. the rig pose step at (R [B,3,3], t [B,3]).

    x2d [B,V,N,2], x3d [B,N,3], K [B,V,3,3], weights [B,V,N,2], extrinsics cam_R [B,V,3,3],
    cam_t [B,V,3]. Returns cost [B], gradient [B,6], Gauss-Newton Hessian [B,6,6], exact Hessian
    [B,6,6] (None unless exact), depths [B,V*N] in their cameras and the rig-step Jacobian
    [B,V*2N,6] of the weighted residuals.
    """
    M, m = camera_matrices(K, cam_R, cam_t)
    return camera_cost_derivatives(x2d, x3d, M, weights, m, R, t, huber, exact)


def camera_matrices(K: Tensor, cam_R: Tensor, cam_t: Tensor) -> tuple[Tensor, Tensor]:
    """M = K R_v [B,V,3,3] and m = K t_v [B,V,3] of `camera_cost_derivatives`: the projections of
    rig-frame points by cameras with intrinsics K [B,V,3,3] and extrinsics cam_R [B,V,3,3], cam_t
    [B,V,3] (cam_from_rig)."""
    return K @ cam_R, (K @ cam_t.unsqueeze(-1)).squeeze(-1)


def multiview_residuals_and_jacobian(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor,
    cam_R: Tensor,
    cam_t: Tensor,
    R: Tensor,
    t: Tensor,
) -> tuple[Tensor, Tensor]:
    """Weighted residuals [B,V*N,2] (pixels) and their rig-step Jacobian [B,V*N,2,6]."""
    batch, views, count = x2d.shape[:3]
    R_cam, t_cam = camera_poses(R, t, cam_R, cam_t)
    r, J, _ = residuals_and_jacobian(*_flatten_views(x2d, x3d, K, weights, R_cam, t_cam))
    J = J @ step_map(cam_R.reshape(batch * views, 3, 3)).unsqueeze(1)
    return r.reshape(batch, views * count, 2), J.reshape(batch, views * count, 2, 6)


def _input_status(x2d: Tensor, x3d: Tensor, weights: Tensor, cam_from_rig: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample status [B] (NON_FINITE_INPUT, NO_USABLE_VIEW or CONVERGED) and usable views [B,V].

    Non-finite keypoints are allowed where their weight is 0 (a missing keypoint or view); a view
    is usable when at least 4 weighted keypoints with non-collinear model points remain.
    """
    batch, views, count = x2d.shape[:3]
    used = (weights > 0).any(-1)  # [B,V,N]
    finite = (torch.isfinite(x2d).all(-1) | ~used).flatten(1).all(1)
    finite &= torch.isfinite(weights).flatten(1).all(1) & torch.isfinite(x3d).flatten(1).all(1)
    finite &= torch.isfinite(cam_from_rig).flatten(1).all(1)
    x3d_views = x3d.unsqueeze(1).expand(batch, views, count, 3).reshape(batch * views, count, 3)
    usable = ~_degenerate(x3d_views, used.reshape(batch * views, count)).view(batch, views) & finite[:, None]
    status = torch.full((batch,), int(PnPStatus.CONVERGED), dtype=torch.int64, device=x2d.device)
    status[~usable.any(1)] = int(PnPStatus.NO_USABLE_VIEW)
    status[~finite] = int(PnPStatus.NON_FINITE_INPUT)
    return status, usable


def _single_view_starts(
    x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor, cam_R: Tensor, cam_t: Tensor, usable: Tensor
) -> tuple[Tensor, Tensor]:
    """EPnP poses of every view mapped into the rig frame: R [B,V,3,3], t [B,V,3]; a view that is
    not usable gets the start of the first usable view of its sample."""
    batch, views, count = x2d.shape[:3]
    flat = _flatten_views(x2d, x3d, K, weights, cam_R, cam_t)[:4]
    bad = ~usable.reshape(-1)
    if bool(bad.any()):  # stand-in problems: EPnP of every view in one batch, never on garbage
        safe_x2d, safe_x3d = _safe_problem(count, flat[2])
        flat = (
            torch.where(bad[:, None, None], safe_x2d, flat[0]),
            torch.where(bad[:, None, None], safe_x3d, flat[1]),
            flat[2],
            torch.where(bad[:, None, None], torch.ones_like(flat[3]), flat[3]),
        )
    R_cam, t_cam = epnp_start(*flat)
    R, t = rig_poses(R_cam.view(batch, views, 3, 3), t_cam.view(batch, views, 3), cam_R, cam_t)
    first = usable.to(torch.int64).argmax(1)  # first usable view (0 where none)
    fallback = torch.where(usable, torch.arange(views, device=x2d.device), first[:, None])
    gather = torch.arange(batch, device=x2d.device)[:, None]
    return R[gather, fallback], t[gather, fallback]


def _given_starts(
    view_poses: tuple[Tensor, Tensor], cam_R: Tensor, cam_t: Tensor, usable: Tensor
) -> tuple[Tensor, Tensor]:
    """Single-view poses cam<-drone (R [B,V,3,3], t [B,V,3]) as rig-frame starts [B,V,3,3], [B,V,3];
    views that are not usable or whose pose is not finite get the first good view's start (or the
    rig origin at 5 m in front of the first camera where none is good)."""
    batch, views = usable.shape
    R_cam = view_poses[0].to(COMPUTE_DTYPE).expand(batch, views, 3, 3)
    t_cam = view_poses[1].to(COMPUTE_DTYPE).expand(batch, views, 3)
    good = usable & torch.isfinite(R_cam).flatten(2).all(-1) & torch.isfinite(t_cam).all(-1)
    eye = torch.eye(3, dtype=COMPUTE_DTYPE, device=usable.device)
    R_cam = torch.where(good[..., None, None], R_cam, eye)
    t_cam = torch.where(good[..., None], t_cam, t_cam.new_tensor([0.0, 0.0, 5.0]))
    R, t = rig_poses(R_cam, t_cam, cam_R, cam_t)
    fallback = torch.where(
        good, torch.arange(views, device=usable.device), good.to(torch.int64).argmax(1)[:, None]
    )
    gather = torch.arange(batch, device=usable.device)[:, None]
    return R[gather, fallback], t[gather, fallback]


def multiview_pnp(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    cam_from_rig: Tensor,
    weights: Tensor | None = None,
    huber: float | None = None,
    init: tuple[Tensor, Tensor] | None = None,
    view_poses: tuple[Tensor, Tensor] | None = None,
    max_iterations: int = 50,
    tolerance: float | None = None,
) -> PnPResult:
    """The drone pose rig<-drone (p_rig = R p_drone + t) minimising the reprojection error in V views.

    x2d [B,V,N,2] pixels; x3d [N,3] or [B,N,3] metres (drone frame); K [V,3,3] or [B,V,3,3];
    cam_from_rig [V,4,4] or [B,V,4,4] (p_cam = T p_rig, metres); weights [B,V,N] or [B,V,N,2]
    (0 drops a keypoint, all 0 a view; x2d may be NaN where the weight is 0); huber: threshold in
    weighted pixels; init: optional rig-frame start (R [B,3,3], t [B,3]), e.g. the last pose;
    view_poses: single-view solutions cam<-drone (R [B,V,3,3], t [B,V,3]) the caller has already,
    used as the views' starts instead of EPnP where they are finite.

    Every usable view's EPnP pose, mapped into the rig frame, starts one damped-Newton refinement
    of the whole multi-view cost (with init another); all run as one batch and the lowest cost
    that puts every weighted keypoint in front of its camera wins, so a view with a poor or
    mirrored single-view pose cannot trap the fused solution.

    Returns a PnPResult in the rig frame: covariance [B,6,6] of (tx, ty, tz, rx, ry, rz), the
    rotation about rig axes (ROS order), inverse Gauss-Newton Hessian scaled by the residual
    variance 2 cost / (2 n - 6) with n the weighted keypoints of all views. Never NaN: samples
    without a usable view (4+ weighted, non-collinear keypoints in one view) get status
    NO_USABLE_VIEW, non-finite inputs NON_FINITE_INPUT, and identity/zero poses. Shapes and
    invalid intrinsics or extrinsics raise ValueError. Not differentiable: see multiview_pnp_layer.
    """
    input_dtype = x2d.dtype
    if tolerance is None:
        tolerance = 1e-10 if input_dtype == torch.float64 else 1e-8
    with torch.inference_mode(), serial_when_small(x2d):
        x2d, x3d, K, cam_from_rig, weights = (
            v.to(COMPUTE_DTYPE) for v in broadcast_multiview(x2d, x3d, K, cam_from_rig, weights)
        )
        batch, views, count = x2d.shape[:3]
        status, usable = _input_status(x2d, x3d, weights, cam_from_rig)
        unusable = status != int(PnPStatus.CONVERGED)
        used = (weights > 0).any(-1)
        # dropped keypoints take no part: zero weight, and finite stand-in coordinates
        x2d = torch.where(used.unsqueeze(-1), x2d, torch.zeros_like(x2d))
        if bool(unusable.any()):  # a well-posed stand-in so that the batch stays finite
            safe_x2d, safe_x3d = _safe_problem(count, K[:, 0])
            x2d = torch.where(unusable[:, None, None, None], safe_x2d.unsqueeze(1), x2d)
            x3d = torch.where(unusable[:, None, None], safe_x3d, x3d)
            K = torch.where(unusable[:, None, None, None], K[:, :1], K)
            eye = torch.eye(4, dtype=COMPUTE_DTYPE, device=x2d.device)
            cam_from_rig = torch.where(unusable[:, None, None, None], eye, cam_from_rig)
            weights = torch.where(unusable[:, None, None, None], torch.ones_like(weights), weights)
            usable = torch.where(unusable[:, None], torch.ones_like(usable), usable)
            used = (weights > 0).any(-1)
        cam_R, cam_t = split_extrinsics(cam_from_rig)
        if view_poses is None:
            starts_R, starts_t = _single_view_starts(x2d, x3d, K, weights, cam_R, cam_t, usable)
        else:
            starts_R, starts_t = _given_starts(view_poses, cam_R, cam_t, usable)
        starts_R, starts_t = list(starts_R.unbind(1)), list(starts_t.unbind(1))
        if init is not None:
            init_R, init_t = init_start(init, batch, starts_R[0], starts_t[0])
            starts_R.append(init_R)
            starts_t.append(init_t)
        hypotheses = len(starts_R)
        tile = lambda v: v.repeat(hypotheses, *([1] * (v.ndim - 1))) if hypotheses > 1 else v  # noqa: E731
        M, m = camera_matrices(K, cam_R, cam_t)
        R, t, cost, H, done, depth, iterations = levenberg_marquardt(
            tile(x2d),
            tile(x3d),
            tile(M),
            tile(weights),
            torch.cat(starts_R),
            torch.cat(starts_t),
            huber,
            max_iterations,
            tolerance,
            derivatives=camera_cost_derivatives,
            extra_inputs=(tile(m),),
        )
        used_flat = used.reshape(batch, views * count)
        if hypotheses > 1:
            in_front = ((depth > 0) | ~tile(used_flat)).all(-1)
            score = torch.where(torch.isfinite(cost) & in_front, cost, torch.full_like(cost, torch.inf))
            # a tie (several starts reaching one optimum) goes to the lowest start index
            best = score.view(hypotheses, batch).argmin(0) * batch + torch.arange(batch, device=x2d.device)
            R, t, cost, H, done, depth = R[best], t[best], cost[best], H[best], done[best], depth[best]

        variance = 2.0 * cost / (2.0 * used_flat.sum(1) - 6.0).clamp_min(1.0)
        inverse = torch.linalg.inv_ex(H)
        singular = (inverse.info != 0) | ~torch.isfinite(inverse.inverse).flatten(1).all(1)
        covariance = torch.where(
            singular[:, None, None], torch.zeros_like(H), inverse.inverse * variance[:, None, None]
        )
        behind = ((depth <= 0) & used_flat).any(-1)
        return final_result(
            R, t, cost, covariance, status, unusable, done, behind, singular, iterations, input_dtype
        )
