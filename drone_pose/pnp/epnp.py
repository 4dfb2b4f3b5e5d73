"""Batched, differentiable EPnP (Lepetit, Moreno-Noguer and Fua, 2009).

The object points are written in barycentric coordinates of four control points (centroid plus
the principal axes); the camera-frame control points span the null space of a 2N x 12 system.
That null space is found through its Schur complement: for given control-point depths Z the x and
y coordinates follow by linear least squares, leaving a 4x4 eigenproblem in Z (the accuracy of
the 12x12 eigendecomposition, for less work on CPU batches).
The null-space combination is found for kernel dimensions 1, 2 and 3 (linearised distance
constraints, refined by Gauss-Newton on the betas), each candidate is aligned to the object by
Kabsch, and the candidate with the lowest reprojection error wins. Every step is a torch op, so
gradients flow to x2d, x3d, K and the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drone_pose.pnp.projection import broadcast_inputs

PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
BETA_GAUSS_NEWTON_STEPS = 5
_MONOMIAL_I = (0, 0, 1, 0, 1, 2, 0, 1, 2, 3)  # beta~ = beta_i beta_j in L's column order
_MONOMIAL_J = (0, 1, 1, 2, 2, 2, 3, 3, 3, 3)


def control_points_and_alphas(x3d: Tensor, point_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Control points [B,4,3] and barycentric coordinates alphas [B,N,4] (rows sum to 1).

    The centroid and principal directions come from the points with positive weight.
    """
    mask = (point_weights > 0).to(x3d.dtype).unsqueeze(-1)  # [B,N,1]
    count = mask.sum(1).clamp_min(1.0)
    centroid = (x3d * mask).sum(1) / count  # [B,3]
    centred = x3d - centroid.unsqueeze(1)
    covariance = (centred * mask).transpose(-1, -2) @ centred / count.unsqueeze(-1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    floor = 1e-10 * eigenvalues[:, -1:].clamp_min(torch.finfo(x3d.dtype).tiny)
    scales = eigenvalues.clamp_min(0.0).maximum(floor).sqrt()  # [B,3]
    axes = eigenvectors * scales.unsqueeze(1)  # columns: principal axes scaled to the spread
    control = torch.cat((centroid.unsqueeze(1), centroid.unsqueeze(1) + axes.transpose(-1, -2)), dim=1)
    coefficients = (centred @ eigenvectors) / scales.unsqueeze(1)  # [B,N,3]
    alphas = torch.cat((1.0 - coefficients.sum(-1, keepdim=True), coefficients), dim=-1)
    return control, alphas


def _batch_control_points(x3d: Tensor, weights: Tensor, shared_model: bool) -> tuple[Tensor, Tensor]:
    """Control points [B,4,3] and alphas [B,N,4]; computed once and expanded for one shared model."""
    batch, count = x3d.shape[:2]
    point_weights = weights.mean(-1)
    if shared_model and bool((point_weights > 0).all()):
        control, alphas = control_points_and_alphas(x3d[:1], point_weights[:1])
        return control.expand(batch, 4, 3), alphas.expand(batch, count, 4)
    return control_points_and_alphas(x3d, point_weights)


def _normalised_coordinates(x2d: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised image coordinates x, y [B,N] of pixels x2d [B,N,2]: K^-1 (u, v, 1), K [B,3,3]."""
    y = (x2d[..., 1] - K[:, None, 1, 2]) / K[:, None, 1, 1]
    return (x2d[..., 0] - K[:, None, 0, 2] - K[:, None, 0, 1] * y) / K[:, None, 0, 0], y


def _schur_system(alphas: Tensor, x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """EPnP's 2N x 12 system reduced to the control-point depths Z: S [B,4,4], P_u and P_v [B,4,4].

    alphas [B,N,4]; x, y [B,N] normalised image coordinates; weights [B,N,2]. The rows of the system
    are w_u (a.X - u a.Z) and w_v (a.Y - v a.Z) for control-point coordinates X, Y, Z [4].
    X = P_u Z and Y = P_v Z minimise them for given Z; the Schur complement S is the cost left in Z.
    """
    wu, wv = weights[..., 0:1] ** 2, weights[..., 1:2] ** 2
    A = alphas
    At = A.transpose(1, 2)
    Du, Dv = x.unsqueeze(-1) * A, y.unsqueeze(-1) * A  # diag(u) A, diag(v) A
    eye = torch.eye(4, dtype=A.dtype, device=A.device)
    AtWuA, AtWvA = At @ (wu * A), At @ (wv * A)
    ridge = 1e-12 * (AtWuA + AtWvA).diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] * eye
    Bu, Bv = At @ (wu * Du), At @ (wv * Dv)
    Pu, Pv = torch.linalg.solve(AtWuA + ridge, Bu), torch.linalg.solve(AtWvA + ridge, Bv)
    S = (
        Du.transpose(1, 2) @ (wu * Du)
        - Bu.transpose(1, 2) @ Pu
        + Dv.transpose(1, 2) @ (wv * Dv)
        - Bv.transpose(1, 2) @ Pv
    )
    return 0.5 * (S + S.transpose(1, 2)), Pu, Pv


def _shared_schur_system(alphas: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`_schur_system` for one shared object (alphas [N,4]) and equal weights on every point.

    Then W = w^2 I cancels from P_u, P_v and only scales S, and with the projector Pi onto the
    columns of A, S = D_u^T (I - Pi) D_u + D_v^T (I - Pi) D_v and P_u = (A^T A)^-1 A^T D_u are
    fixed linear maps of x x^T, y y^T and x, y: two small matrix products for the whole batch.
    """
    count = alphas.shape[0]
    eye = torch.eye(count, dtype=alphas.dtype, device=alphas.device)
    pseudo_inverse = torch.linalg.pinv(alphas)  # [4,N] = (A^T A)^-1 A^T
    residual_projector = eye - alphas @ pseudo_inverse  # [N,N]
    # P[i,j] = sum_k pinv[i,k] x_k A[k,j];  S[i,j] = sum_kl x_k x_l A[k,i] (I - Pi)[k,l] A[l,j]
    p_map = (pseudo_inverse.T.unsqueeze(-1) * alphas.unsqueeze(1)).reshape(count, 16)
    s_map = (
        alphas[:, None, :, None] * residual_projector[:, :, None, None] * alphas[None, :, None, :]
    ).reshape(count * count, 16)
    coordinates = torch.cat((x, y))  # [2B,N]
    P = (coordinates @ p_map).view(-1, 4, 4)
    outer = (coordinates.unsqueeze(-1) * coordinates.unsqueeze(-2)).flatten(1)
    S_uv = (outer @ s_map).view(2, -1, 4, 4)
    S = S_uv[0] + S_uv[1]
    batch = x.shape[0]
    return 0.5 * (S + S.transpose(1, 2)), P[:batch], P[batch:]


def _basis_from_depths(Z: Tensor, Pu: Tensor, Pv: Tensor) -> Tensor:
    """Control-point basis [B,12,4] (unit columns; x, y, z per point) from depth vectors Z [B,4,4]."""
    basis = torch.stack((Pu @ Z, Pv @ Z, Z), dim=2).reshape(Z.shape[0], 12, 4)
    return basis * torch.rsqrt((basis * basis).sum(1, keepdim=True))


def null_space_basis(alphas: Tensor, x: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """Basis [B,12,4] (unit columns, best first) of the near-null space of EPnP's 2N x 12 system.

    The eigenvectors of the Schur complement (ascending eigenvalues) give the depths of each column.
    """
    S, Pu, Pv = _schur_system(alphas, x, y, weights)
    return _basis_from_depths(torch.linalg.eigh(S)[1], Pu, Pv)


def _pair_difference_matrix(like: Tensor) -> Tensor:
    """[6,4] rows e_a - e_b for the control-point pairs (a, b) of PAIRS."""
    matrix = torch.zeros(6, 4, dtype=like.dtype, device=like.device)
    for row, (a, b) in enumerate(PAIRS):
        matrix[row, a], matrix[row, b] = 1.0, -1.0
    return matrix


def _monomial_selection(like: Tensor) -> Tensor:
    """[16,10]: flattened 4x4 dot products -> L's columns (off-diagonal products counted twice)."""
    selection = torch.zeros(16, 10, dtype=like.dtype, device=like.device)
    for column, (i, j) in enumerate(zip(_MONOMIAL_I, _MONOMIAL_J, strict=True)):
        selection[4 * i + j, column] = 1.0 if i == j else 2.0
    return selection


def _distance_system(kernel: Tensor, control: Tensor) -> tuple[Tensor, Tensor]:
    """L [B,6,10] and rho [B,6] of EPnP: L beta~ = rho with beta~ the quadratic beta monomials.

    Column order of L: b11, b12, b22, b13, b23, b33, b14, b24, b34, b44. The control-point pair
    differences of all kernel vectors are one matrix product over the whole batch, and the dot
    products of those differences pass through a fixed selection matrix: no per-sample tiny
    matrix products (those dominate on CPU batches). rho is computed once for a shared object.
    """
    batch = kernel.shape[0]
    pairs = _pair_difference_matrix(kernel)
    points = kernel.reshape(batch, 4, 12).transpose(0, 1).reshape(4, batch * 12)  # [control, B*(xyz, vector)]
    differences = (pairs @ points).view(6, batch, 3, 4)
    dot = (differences.unsqueeze(-1) * differences.unsqueeze(-2)).sum(2)  # [6,B,4,4]
    L = (dot.view(6 * batch, 16) @ _monomial_selection(kernel)).view(6, batch, 10).transpose(0, 1)
    unique_control = control[:1] if control.stride(0) == 0 else control
    rho = ((pairs @ unique_control) ** 2).sum(-1).expand(batch, 6)
    return L, rho


def _least_squares(A: Tensor, y: Tensor) -> Tensor:
    """Batched least squares min ||A x - y|| through the normal equations: A [B,6,k], y [B,6]."""
    k = A.shape[-1]
    products = A.transpose(-1, -2) @ torch.cat((A, y.unsqueeze(-1)), -1)  # [A^T A | A^T y]
    normal, rhs = products[..., :k], products[..., k:]
    ridge = 1e-12 * normal.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
    eye = torch.eye(k, dtype=A.dtype, device=A.device)
    return torch.linalg.solve(normal + ridge * eye, rhs).squeeze(-1)


def _signed_sqrt_pair(b11: Tensor, b22: Tensor, b12: Tensor) -> tuple[Tensor, Tensor]:
    """beta1, beta2 from b11 = beta1^2, b22 = beta2^2, sign(b12) = sign(beta1 beta2) (OpenCV's rule)."""
    negative = b11 < 0
    beta1 = torch.where(negative, (-b11).clamp_min(0).sqrt(), b11.clamp_min(0).sqrt())
    beta2 = torch.where(negative, (-b22).clamp_min(0).sqrt(), b22.clamp_min(0).sqrt())
    beta1 = torch.where(b12 < 0, -beta1, beta1)
    return beta1, beta2


def _initial_betas(L: Tensor, rho: Tensor, all_candidates: bool = True) -> list[Tensor]:
    """Approximate betas [B,4] for kernel dimensions 1 (as 4-approx), 2 and 3 (only the first if asked)."""
    zeros = torch.zeros_like(rho[:, 0])
    safe = lambda x: torch.where(x.abs() > 1e-300, x, torch.full_like(x, 1e-300))  # noqa: E731
    # N = 4 approximation: [b11, b12, b13, b14]
    b = _least_squares(L[..., [0, 1, 3, 6]], rho)
    beta1 = torch.where(b[:, 0] < 0, (-b[:, 0]).clamp_min(0).sqrt(), b[:, 0].clamp_min(0).sqrt())
    sign = torch.where(b[:, 0] < 0, -1.0, 1.0).to(b.dtype)
    betas4 = torch.stack(
        (beta1, sign * b[:, 1] / safe(beta1), sign * b[:, 2] / safe(beta1), sign * b[:, 3] / safe(beta1)),
        dim=-1,
    )
    if not all_candidates:
        return [betas4]
    # N = 2 approximation: [b11, b12, b22]
    b = _least_squares(L[..., [0, 1, 2]], rho)
    beta1, beta2 = _signed_sqrt_pair(b[:, 0], b[:, 2], b[:, 1])
    betas2 = torch.stack((beta1, beta2, zeros, zeros), dim=-1)
    # N = 3 approximation: [b11, b12, b22, b13, b23]
    b = _least_squares(L[..., [0, 1, 2, 3, 4]], rho)
    beta1, beta2 = _signed_sqrt_pair(b[:, 0], b[:, 2], b[:, 1])
    betas3 = torch.stack((beta1, beta2, b[:, 3] / safe(beta1), zeros), dim=-1)
    return [betas4, betas2, betas3]


def _refine_betas(betas: Tensor, L: Tensor, rho: Tensor, steps: int = BETA_GAUSS_NEWTON_STEPS) -> Tensor:
    """Gauss-Newton on rho - L beta~(beta) over the four betas [B,4]."""
    i = torch.tensor(_MONOMIAL_I, device=betas.device)
    j = torch.tensor(_MONOMIAL_J, device=betas.device)
    onehot_i = torch.nn.functional.one_hot(i, 4).to(betas.dtype)  # [10,4]
    onehot_j = torch.nn.functional.one_hot(j, 4).to(betas.dtype)
    for _ in range(steps):
        bi, bj = betas @ onehot_i.T, betas @ onehot_j.T  # [B,10] = betas[:, i], betas[:, j]
        d_monomials = bj.unsqueeze(-1) * onehot_i + bi.unsqueeze(-1) * onehot_j  # [B,10,4]
        # one product for the Jacobian L dm/dbeta [B,6,4] and the fitted distances L m [B,6]
        products = L @ torch.cat((d_monomials, (bi * bj).unsqueeze(-1)), -1)
        betas = betas + _least_squares(products[..., :4], rho - products[..., 4])
    return betas


def kabsch(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation R [B,3,3] and translation t [B,3] minimising sum ||R source + t - target||^2.

    source, target [B,N,3]. With the cross-covariance C = U S V^T, R = U diag(d, 1, 1) V^T
    (singular values ascending, d = +-1 so that det R = 1). V and S^2 come from the symmetric 3x3
    eigenproblem of C^T C (cheaper than a batched 3x3 SVD on CPU); U's two leading columns
    are C v / s and the third is their cross product, which also makes R proper when the points are
    planar (smallest s = 0). Differentiable while the singular values are distinct.
    """
    source_mean, target_mean = source.mean(1, keepdim=True), target.mean(1, keepdim=True)
    covariance = (target - target_mean).transpose(1, 2) @ (source - source_mean)
    eigenvalues, V = torch.linalg.eigh(covariance.transpose(1, 2) @ covariance)  # ascending
    tiny = torch.finfo(covariance.dtype).tiny
    CV = covariance @ V  # columns s_i u_i
    u1 = CV[..., 1] * torch.rsqrt(eigenvalues[:, 1:2].clamp_min(tiny))
    u2 = CV[..., 2] * torch.rsqrt(eigenvalues[:, 2:3].clamp_min(tiny))
    u0 = torch.linalg.cross(u1, u2, dim=-1) * torch.linalg.det(V).unsqueeze(-1)
    R = torch.stack((u0, u1, u2), dim=-1) @ V.transpose(1, 2)
    return R, (target_mean - source_mean @ R.transpose(1, 2)).squeeze(1)


def _camera_points(betas: Tensor, kernel: Tensor, alphas: Tensor) -> Tensor:
    """Object points in the camera frame [B,N,3] from betas [B,4], in front of the camera."""
    control_cam = (kernel @ betas.unsqueeze(-1)).reshape(-1, 4, 3)
    points_cam = alphas @ control_cam
    flip = (points_cam[..., 2].mean(-1) < 0).to(points_cam.dtype)
    return points_cam * (1.0 - 2.0 * flip)[:, None, None]


def epnp(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    return_candidates: bool = False,
    all_candidates: bool = True,
    beta_steps: int = BETA_GAUSS_NEWTON_STEPS,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """EPnP poses camera<-object: x2d [B,N,2] px, x3d [N,3] or [B,N,3] m, K [3,3] or [B,3,3].

    weights [B,N] or [B,N,2] scale each point's equations (zero drops a point). Returns R [B,3,3]
    and t [B,3]; with return_candidates also the candidates R [B,C,3,3] and t [B,C,3] (kernel
    dimensions 1, 2, 3) for multi-hypothesis refinement. all_candidates=False keeps only the first
    (cheaper; enough to initialise an iterative solver); beta_steps sets the Gauss-Newton steps on
    the betas. Differentiable.
    """
    shared_model = x3d.ndim == 2 or x3d.shape[0] == 1 or x3d.stride(0) == 0
    x2d, x3d, K, weights = broadcast_inputs(x2d, x3d, K, weights)
    batch, count = x2d.shape[:2]
    control, alphas = _batch_control_points(x3d, weights, shared_model)
    x, y = _normalised_coordinates(x2d, K)
    normalised = torch.stack((x, y), dim=-1)
    kernel = null_space_basis(alphas, x, y, weights)
    L, rho = _distance_system(kernel, control)

    # The candidates run as one stacked batch [C*B]; each is scored by the reprojection of its
    # camera-frame points, and only the candidates asked for are aligned rigidly (Kabsch).
    initial = _initial_betas(L, rho, all_candidates)
    n = len(initial)
    tile = lambda v: v.repeat(n, *([1] * (v.ndim - 1))) if n > 1 else v  # noqa: E731
    points_cam = _camera_points(
        _refine_betas(torch.cat(initial), tile(L), tile(rho), beta_steps), tile(kernel), tile(alphas)
    )
    index = torch.arange(batch, device=x2d.device)
    if n == 1:
        best = torch.zeros(batch, dtype=torch.long, device=x2d.device)
    else:
        projected = points_cam[..., :2] / points_cam[..., 2:3].clamp_min(1e-12)
        error = ((tile(weights) * (projected - tile(normalised))) ** 2).sum((-1, -2))
        error = torch.where(torch.isfinite(error), error, torch.full_like(error, torch.inf)).view(n, batch)
        best = error.argmin(dim=0)
    if return_candidates:
        all_R, all_t = kabsch(tile(x3d), points_cam)
        all_R = all_R.view(n, batch, 3, 3).transpose(0, 1)  # [B,C,3,3]
        all_t = all_t.view(n, batch, 3).transpose(0, 1)  # [B,C,3]
        return all_R[index, best], all_t[index, best], all_R, all_t
    chosen = points_cam if n == 1 else points_cam.view(n, batch, count, 3).transpose(0, 1)[index, best]
    return kabsch(x3d, chosen)


def _smallest_eigenvector(S: Tensor, iterations: int = 3) -> Tensor:
    """Unit eigenvector [B,4] of the smallest eigenvalue of symmetric PSD S [B,4,4], by inverse iteration.

    The Schur complement's smallest eigenvalue is at the noise level and well below the others, so
    a few multiplications by the (ridged) inverse converge, cheaper than a batched eigh on CPU.
    """
    eye = torch.eye(4, dtype=S.dtype, device=S.device)
    ridge = 1e-12 * S.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] + torch.finfo(S.dtype).tiny
    inverse = torch.linalg.inv_ex(S + ridge * eye).inverse
    vector = inverse.sum(-1)  # inverse applied to (1, 1, 1, 1)
    for _ in range(iterations):
        vector = vector * torch.rsqrt((vector * vector).sum(-1, keepdim=True))
        vector = (inverse @ vector.unsqueeze(-1)).squeeze(-1)
    return vector * torch.rsqrt((vector * vector).sum(-1, keepdim=True))


def _householder_basis(vector: Tensor) -> Tensor:
    """Orthonormal basis [B,4,4] whose first column is +-vector [B,4] (unit), by a Householder reflection."""
    sign = torch.where(vector[:, :1] < 0, -1.0, 1.0).to(vector.dtype)
    w = vector.clone()
    w[:, :1] = w[:, :1] + sign
    w = w * torch.rsqrt((w * w).sum(-1, keepdim=True))
    return torch.eye(4, dtype=vector.dtype, device=vector.device) - 2.0 * w.unsqueeze(-1) * w.unsqueeze(-2)


def _rotation_from_control_points(control_cam: Tensor, axes: Tensor) -> Tensor:
    """Rotation [B,3,3] mapping the object's principal axes onto the camera-frame control points.

    control_cam [B,4,3] (centroid, then the ends of the scaled principal axes, ascending spread);
    axes [B,3,3] the object's unit principal axes as columns. The two widest axes fix the rotation
    (the third may be flat for planar objects): they are orthonormalised symmetrically, and the
    third follows from their cross product, so the result is always a proper rotation.
    """
    a1, a2 = control_cam[:, 2] - control_cam[:, 0], control_cam[:, 3] - control_cam[:, 0]
    a1 = a1 * torch.rsqrt((a1 * a1).sum(-1, keepdim=True))
    a2 = a2 * torch.rsqrt((a2 * a2).sum(-1, keepdim=True))
    bisector, other = a1 + a2, a1 - a2  # orthogonal; rotate both halves back to 45 degrees
    bisector = bisector * torch.rsqrt((bisector * bisector).sum(-1, keepdim=True))
    other = other * torch.rsqrt((other * other).sum(-1, keepdim=True))
    m1, m2 = (bisector + other) * 0.5**0.5, (bisector - other) * 0.5**0.5
    m0 = torch.linalg.cross(m1, m2, dim=-1) * torch.linalg.det(axes).unsqueeze(-1)
    return torch.stack((m0, m1, m2), dim=-1) @ axes.transpose(-1, -2)


def epnp_start(
    x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor, beta_steps: int = 2
) -> tuple[Tensor, Tensor]:
    """A cheap EPnP pose (R [B,3,3], t [B,3]) to start an iterative solver; not differentiable.

    Inputs as broadcast by `broadcast_inputs` (x2d [B,N,2] px, x3d [B,N,3] m, K [B,3,3], weights
    [B,N,2]). The same Schur-complement system and linearised kernel-dimension-4 betas as `epnp`,
    with two shortcuts that leave the refined optimum unchanged: the null-space basis is the
    smallest Schur eigenvector (inverse iteration) completed by a Householder reflection, since the
    betas span all four directions anyway; and the rotation is read from the camera-frame control
    points instead of a Kabsch alignment of all points.
    """
    batch = x2d.shape[0]
    shared_model = x3d.stride(0) == 0 or batch == 1
    control, alphas = _batch_control_points(x3d, weights, shared_model)
    axes = (control[:, 1:] - control[:, :1]).transpose(-1, -2)  # columns: principal axes, scaled
    axes = axes * torch.rsqrt((axes * axes).sum(-2, keepdim=True))
    x, y = _normalised_coordinates(x2d, K)
    uniform = bool((weights == weights[:1, :1, :1]).all())
    if shared_model and uniform:
        S, Pu, Pv = _shared_schur_system(alphas[0], x, y)
    else:
        S, Pu, Pv = _schur_system(alphas, x, y, weights)
    kernel = _basis_from_depths(_householder_basis(_smallest_eigenvector(S)), Pu, Pv)
    L, rho = _distance_system(kernel, control)
    betas = _refine_betas(_initial_betas(L, rho, all_candidates=False)[0], L, rho, beta_steps)
    control_cam = (kernel @ betas.unsqueeze(-1)).reshape(batch, 4, 3)
    in_front = (alphas @ control_cam)[..., 2].mean(-1) >= 0
    control_cam = torch.where(in_front[:, None, None], control_cam, -control_cam)
    R = _rotation_from_control_points(control_cam, axes)
    return R, control_cam[:, 0] - (R @ control[:, 0].unsqueeze(-1)).squeeze(-1)
