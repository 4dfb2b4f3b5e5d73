"""Reprojection residuals of a pose, their Jacobian, pose updates, and PnP input checks."""

from __future__ import annotations

import torch
from torch import Tensor

from drone_pose.geometry.camera import validate_intrinsics

MIN_POINTS = 4


def broadcast_inputs(
    x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check shapes and expand to x2d [B,N,2], x3d [B,N,3], K [B,3,3], weights [B,N,2].

    Raises ValueError for malformed shapes, fewer than 4 points or invalid intrinsics.
    """
    if x2d.ndim != 3 or x2d.shape[-1] != 2:
        raise ValueError(f"x2d must have shape [B, N, 2], got {list(x2d.shape)}")
    batch, count = x2d.shape[:2]
    if count < MIN_POINTS:
        raise ValueError(f"PnP needs at least {MIN_POINTS} points, got {count}")
    if x3d.ndim == 2:
        x3d = x3d.unsqueeze(0)
    if x3d.ndim != 3 or x3d.shape[1:] != (count, 3) or x3d.shape[0] not in (1, batch):
        raise ValueError(f"x3d must have shape [N, 3] or [B, N, 3] with N = {count}, got {list(x3d.shape)}")
    validate_intrinsics(K)
    if K.ndim == 2:
        K = K.unsqueeze(0)
    if K.ndim != 3 or K.shape[0] not in (1, batch):
        raise ValueError(f"K must have shape [3, 3] or [B, 3, 3] with B = {batch}, got {list(K.shape)}")
    if weights is None:
        weights = x2d.new_ones(batch, count, 2)
    elif weights.shape == (batch, count):
        weights = weights.unsqueeze(-1).expand(batch, count, 2)
    elif weights.shape != (batch, count, 2):
        raise ValueError(f"weights must have shape [B, N] or [B, N, 2], got {list(weights.shape)}")
    return x2d, x3d.expand(batch, count, 3), K.expand(batch, 3, 3), weights


# skew(w).flatten(-2) = _SKEW @ w
_SKEW = (
    (0.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (-1.0, 0.0, 0.0),
    (0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0),
)  # fmt: skip


def skew(w: Tensor) -> Tensor:
    """Cross-product matrices [..., 3, 3] of vectors w [..., 3]: skew(w) v = w x v."""
    return (w @ w.new_tensor(_SKEW).T).reshape(*w.shape, 3)


def rotvec_to_matrix(w: Tensor) -> Tensor:
    """Rodrigues' formula for rotation vectors w [B,3] -> [B,3,3]: I + a W + b W^2 with W = [w]x.

    a = sin(theta)/theta and b = (1 - cos(theta))/theta^2 = 0.5 (sin(theta/2)/(theta/2))^2 through
    torch.sinc, exact and differentiable at zero. Written out rather than roma.rotvec_to_rotmat: it
    runs in every solver iteration, where roma's general version costs more on small CPU batches.
    """
    theta = ((w * w).sum(-1) + torch.finfo(w.dtype).tiny).sqrt()[:, None, None]
    W = skew(w)
    a = torch.sinc(theta / torch.pi)
    b = 0.5 * torch.sinc(theta / (2.0 * torch.pi)) ** 2
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * W + b * (W @ W)


def apply_update(R: Tensor, t: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Pose after the step delta [B,6] = (dt, dw): t + dt and exp([dw]x) R (left, camera axes)."""
    return rotvec_to_matrix(delta[:, 3:]) @ R, t + delta[:, :3]


def project_with_depth(x3d: Tensor, K: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rotated points R X [B,N,3], camera points p [B,N,3] and pixels [B,N,2]."""
    rotated = x3d @ R.transpose(-1, -2)
    p = rotated + t.unsqueeze(1)
    uvw = p @ K.transpose(-1, -2)
    return rotated, p, uvw[..., :2] / uvw[..., 2:3]


def residuals(x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Weighted reprojection residuals [B,N,2] = weights * (pi(K (R X + t)) - x2d), pixels."""
    return weights * (project_with_depth(x3d, K, R, t)[2] - x2d)


def residuals_and_jacobian(
    x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor, R: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Residuals [B,N,2], their Jacobian [B,N,2,6] w.r.t. (dt, dw) at zero, and depths [B,N].

    For p = R X + t and pixel (u, v): d(u, v)/dp = [[fx, s, cx - u], [0, fy, cy - v]] / z,
    dp/dt = I and dp/dw = -[R X]x, so the rotation rows are (R X) x (d(u, v)/dp rows).
    """
    rotated, p, uv = project_with_depth(x3d, K, R, t)
    inv_z = 1.0 / p[..., 2:3]
    k0 = K[:, None, 0, :]  # [B,1,3] = (fx, s, cx)
    k1 = K[:, None, 1, :]  # (0, fy, cy)
    du_dp = (k0 - uv[..., 0:1] * K.new_tensor([0.0, 0.0, 1.0])) * inv_z
    dv_dp = (k1 - uv[..., 1:2] * K.new_tensor([0.0, 0.0, 1.0])) * inv_z
    d_uv_dp = torch.stack((du_dp, dv_dp), dim=-2)  # [B,N,2,3]
    d_uv_dw = torch.linalg.cross(rotated.unsqueeze(-2).expand_as(d_uv_dp), d_uv_dp, dim=-1)
    jacobian = weights.unsqueeze(-1) * torch.cat((d_uv_dp, d_uv_dw), dim=-1)
    return weights * (uv - x2d), jacobian, p[..., 2]


def huber_weights(squared_norms: Tensor, delta: float | None) -> tuple[Tensor, Tensor]:
    """Robust cost rho(s) [B,N] and IRLS weights rho'(s) [B,N] for squared residual norms s.

    rho(s) = s for s <= delta^2 and 2 delta sqrt(s) - delta^2 beyond (Huber); delta=None: rho(s) = s.
    """
    if delta is None:
        return squared_norms, torch.ones_like(squared_norms)
    norms = squared_norms.clamp_min(torch.finfo(squared_norms.dtype).tiny).sqrt()
    inlier = norms <= delta
    rho = torch.where(inlier, squared_norms, 2.0 * delta * norms - delta * delta)
    return rho, torch.where(inlier, torch.ones_like(norms), delta / norms)


def robust_cost(r: Tensor, delta: float | None) -> Tensor:
    """0.5 * sum_i rho(||r_i||^2) per sample: r [B,N,2] -> [B]."""
    return 0.5 * huber_weights((r * r).sum(-1), delta)[0].sum(-1)


def huber_second_derivative(squared_norms: Tensor, delta: float | None) -> Tensor:
    """rho''(s) [B,N] of the Huber kernel: 0 inside, -delta / (2 s^1.5) outside."""
    if delta is None:
        return torch.zeros_like(squared_norms)
    s = squared_norms.clamp_min(torch.finfo(squared_norms.dtype).tiny)
    return torch.where(s.sqrt() <= delta, torch.zeros_like(s), -0.5 * delta / (s * s.sqrt()))


def cost_derivatives(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor,
    R: Tensor,
    t: Tensor,
    huber: float | None,
    exact: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Derivatives of the cost 0.5 sum_i rho(||r_i||^2) w.r.t. the pose step (dt, dw) at zero.

    Returns cost [B], gradient [B,6], the Gauss-Newton Hessian sum rho' J^T J [B,6,6], the exact
    Hessian [B,6,6] when exact=True (adding the Huber curvature 2 rho'' (J^T r)(J^T r)^T and the
    residual-weighted second derivatives of the projection; None otherwise), depths z [B,N] and the
    weighted residual Jacobian J [B,2N,6] (rows u0, v0, u1, ...).
    """
    batch, count = x2d.shape[:2]
    rotated, p, uv = project_with_depth(x3d, K, R, t)
    z = p[..., 2:3]
    e3 = K.new_tensor([0.0, 0.0, 1.0])
    # d(u, v)/dp = (K rows 0, 1 - (u, v) e3) / z, per point: [B,N,2,3]
    d_uv_dp = (K[:, None, :2, :] - uv.unsqueeze(-1) * e3) / z.unsqueeze(-1)
    d_uv_dw = torch.linalg.cross(rotated.unsqueeze(-2).expand_as(d_uv_dp), d_uv_dp, dim=-1)
    J = (weights.unsqueeze(-1) * torch.cat((d_uv_dp, d_uv_dw), dim=-1)).reshape(batch, 2 * count, 6)
    r = weights * (uv - x2d)
    r_flat = r.reshape(batch, 2 * count, 1)
    if huber is None:  # rho(s) = s: no per-point norms needed
        cost = 0.5 * r_flat.squeeze(-1).square().sum(-1)
        Jw = J
    else:
        squared = r[..., 0] * r[..., 0] + r[..., 1] * r[..., 1]
        rho, irls = huber_weights(squared, huber)
        cost = 0.5 * rho.sum(-1)
        Jw = J * irls.repeat_interleave(2, dim=1).unsqueeze(-1)
    Jw_t = Jw.transpose(1, 2)
    gradient = (Jw_t @ r_flat).squeeze(-1)
    gauss_newton = Jw_t @ J
    hessian = None
    if exact:
        # Elementwise over the two image coordinates: far cheaper than tiny per-point matmuls.
        J_points = J.view(batch, count, 2, 6)
        Jr = J_points[:, :, 0] * r[..., 0:1] + J_points[:, :, 1] * r[..., 1:2]  # [B,N,6] per-point J^T r
        hessian = gauss_newton
        if huber is not None:
            curvature = huber_second_derivative(squared, huber).unsqueeze(-1)
            hessian = hessian + 2.0 * (curvature * Jr).transpose(1, 2) @ Jr
        # Second derivatives of the projection weighted by lambda_c = rho' w_c r_c per coordinate.
        lam = weights * r if huber is None else irls.unsqueeze(-1) * weights * r  # [B,N,2]
        m = Jr if huber is None else irls.unsqueeze(-1) * Jr  # [B,N,6]
        d = lam[..., 0:1] * d_uv_dp[:, :, 0] + lam[..., 1:2] * d_uv_dp[:, :, 1]  # [B,N,3]
        # d(dp/dw)/d(dt, dw) couples rows 2 (1/z), 3 (y/z) and 4 (-x/z) of the pose step.
        inv_z = 1.0 / z
        q = torch.cat((inv_z, rotated[..., 1:2] * inv_z, -rotated[..., 0:1] * inv_z), dim=-1)  # [B,N,3]
        outer = torch.nn.functional.pad(q.transpose(1, 2) @ m, (0, 0, 2, 1))  # [B,6,6]
        ad = rotated.transpose(1, 2) @ d
        trace = ad.diagonal(dim1=-2, dim2=-1).sum(-1)
        eye = torch.eye(3, dtype=K.dtype, device=K.device)
        rotation_block = 0.5 * (ad + ad.transpose(-1, -2)) - trace[:, None, None] * eye
        hessian = (
            hessian - outer - outer.transpose(-1, -2) + torch.nn.functional.pad(rotation_block, (3, 0, 3, 0))
        )
    return cost, gradient, gauss_newton, hessian, p[..., 2], J
