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
_SKEW = torch.tensor(
    [
        (0.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (-1.0, 0.0, 0.0),
        (0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0),
    ],
    dtype=torch.float64,
).T  # fmt: skip


def skew(w: Tensor) -> Tensor:
    """Cross-product matrices [..., 3, 3] of vectors w [..., 3]: skew(w) v = w x v."""
    return (w @ _SKEW.to(w)).view(*w.shape, 3)


def rotvec_to_matrix(w: Tensor) -> Tensor:
    """Rodrigues' formula for rotation vectors w [B,3] -> [B,3,3]: I + a W + b W^2 with W = [w]x.

    a = sin(theta)/theta and b = (1 - cos(theta))/theta^2 = 0.5 (sin(theta/2)/(theta/2))^2 through
    torch.sinc, exact and differentiable at zero. Written out rather than roma.rotvec_to_rotmat: it
    runs in every solver iteration, where roma's general version costs more on small CPU batches.
    """
    theta = (w.square().sum(-1) + torch.finfo(w.dtype).tiny).sqrt().view(-1, 1, 1) / torch.pi
    W = skew(w)
    b = torch.sinc(0.5 * theta).square() * 0.5
    return torch.baddbmm(torch.sinc(theta) * W + torch.eye(3, dtype=w.dtype, device=w.device), b * W, W)


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
    rho = torch.where(norms <= delta, squared_norms, (2.0 * delta) * norms - delta * delta)
    return rho, (delta / norms).clamp_max(1.0)  # delta / norms >= 1 exactly where norms <= delta


def robust_cost(r: Tensor, delta: float | None) -> Tensor:
    """0.5 * sum_i rho(||r_i||^2) per sample: r [B,N,2] -> [B]."""
    return 0.5 * huber_weights((r * r).sum(-1), delta)[0].sum(-1)


def huber_second_derivative(squared_norms: Tensor, delta: float | None) -> Tensor:
    """rho''(s) [B,N] of the Huber kernel: 0 inside, -delta / (2 s^1.5) outside."""
    if delta is None:
        return torch.zeros_like(squared_norms)
    s = squared_norms.clamp_min(torch.finfo(squared_norms.dtype).tiny)
    root = s.sqrt()
    return torch.where(root <= delta, 0.0, (-0.5 * delta) / (s * root))


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
    return camera_cost_derivatives(
        x2d.unsqueeze(1), x3d, K.unsqueeze(1), weights.unsqueeze(1), None, R, t, huber, exact
    )


def camera_cost_derivatives(
    x2d: Tensor,
    x3d: Tensor,
    M: Tensor,
    weights: Tensor,
    m: Tensor | None,
    R: Tensor,
    t: Tensor,
    huber: float | None,
    exact: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """`cost_derivatives` of the keypoints x2d [B,V,N,2] (weights [B,V,N,2]) that V cameras see of
    the model x3d [B,N,3] at the pose (R [B,3,3], t [B,3]), w.r.t. the step (dt, dw) of that pose.

    Camera v projects a point p of the pose's frame to pixels by (u w, v w, w) = M_v p + m_v with
    M [B,V,3,3] = K_v R_v and m [B,V,3] = K_v t_v (None: 0) for a camera with intrinsics K_v and
    pose (R_v, t_v) w.r.t. that frame; w is the depth in camera v. Returns cost [B], gradient
    [B,6], Gauss-Newton and exact Hessians [B,6,6] (None unless exact), depths [B,V*N] and the
    Jacobian [B,2VN,6] of the weighted residuals (rows view-major, then u, v per point).

    With k_i the rows of M_v, du/dp = (k0 - u k2) / w and likewise for v; dp/d(dt, dw) = [I, -[a]x]
    with a = R X, so the rotation columns are a x (du/dp). The exact Hessian adds the Huber
    curvature and the residual-weighted second derivatives: -(q m^T + m q^T) with q = (k2, a x k2) / w
    from d^2u/dp^2 = -(k2 du/dp^T + du/dp k2^T) / w, and sym(a d^T) - (a.d) I from d^2p/dw^2.
    """
    batch, views, count = x2d.shape[:3]
    points = views * count
    rotated = x3d @ R.transpose(-1, -2)  # [B,N,3]
    uvw = (rotated + t.unsqueeze(1)).unsqueeze(1) @ M.transpose(-1, -2)  # [B,V,N,3]
    if m is not None:
        uvw = uvw + m.unsqueeze(2)
    inv_w = 1.0 / uvw[..., 2:3]
    uv = uvw[..., :2] * inv_w
    rows = M.unsqueeze(2)  # [B,V,1,3,3]
    depth_row = rows[..., 2:3, :]
    d_uv_dp = (rows[..., :2, :] - uv.unsqueeze(-1) * depth_row) * inv_w.unsqueeze(-1)  # [B,V,N,2,3]
    a = rotated[:, None, :, None, :]  # [B,1,N,1,3]
    J_points = weights.unsqueeze(-1) * torch.cat((d_uv_dp, torch.linalg.cross(a, d_uv_dp, dim=-1)), -1)
    J = J_points.view(batch, 2 * points, 6)
    r = weights * (uv - x2d)  # [B,V,N,2]
    r_flat = r.reshape(batch, 2 * points, 1)
    if huber is None:  # rho(s) = s: no per-point norms needed
        cost = 0.5 * r_flat.square().sum((1, 2))
        Jw = J
    else:
        squared = r.square().sum(-1)  # [B,V,N]
        rho, irls = huber_weights(squared, huber)
        cost = 0.5 * rho.sum((1, 2))
        Jw = (J_points * irls[..., None, None]).view(batch, 2 * points, 6)
    Jw_t = Jw.transpose(1, 2)
    gradient = (Jw_t @ r_flat).squeeze(-1)
    gauss_newton = Jw_t @ J
    hessian = None
    if exact:
        Jr = (r.unsqueeze(-2) @ J_points).squeeze(-2)  # [B,V,N,6] per-point J^T r
        hessian = gauss_newton
        # lambda_c = rho' w_c r_c per coordinate weighs the projection's second derivatives
        lam = weights * r if huber is None else irls.unsqueeze(-1) * weights * r
        if huber is not None:
            curvature = huber_second_derivative(squared, huber).unsqueeze(-1)
            Jr_flat = Jr.view(batch, points, 6)
            hessian = hessian + 2.0 * (curvature.view(batch, points, 1) * Jr_flat).transpose(1, 2) @ Jr_flat
            Jr = irls.unsqueeze(-1) * Jr
        d = (lam.unsqueeze(-2) @ d_uv_dp).squeeze(-2)  # [B,V,N,3]
        k2 = depth_row.squeeze(-2)  # [B,V,1,3]
        q = torch.cat((k2.expand(batch, views, count, 3), torch.linalg.cross(a.squeeze(-2), k2, dim=-1)), -1)
        outer = (q * inv_w).view(batch, points, 6).transpose(1, 2) @ Jr.view(batch, points, 6)
        ad = rotated.transpose(1, 2) @ d.sum(1)  # [B,3,3]: d summed over views, a shared by them
        trace = ad.diagonal(dim1=-2, dim2=-1).sum(-1)
        eye = torch.eye(3, dtype=M.dtype, device=M.device)
        rotation_block = 0.5 * (ad + ad.transpose(-1, -2)) - trace[:, None, None] * eye
        hessian = (
            hessian - outer - outer.transpose(-1, -2) + torch.nn.functional.pad(rotation_block, (3, 0, 3, 0))
        )
    return cost, gradient, gauss_newton, hessian, uvw[..., 2].reshape(batch, points), J
