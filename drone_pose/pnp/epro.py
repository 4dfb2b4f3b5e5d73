"""EPro-PnP (Chen et al., CVPR 2022): the pose as a distribution, trained by a Monte Carlo KL loss.

The weighted reprojection cost f(y) = 0.5 sum_i ||w_i o (pi(R x_i + t) - x2d_i)||^2 defines the
pose likelihood exp(-f(y)). With a Dirac target at the true pose the KL loss is

    L_KL = f(y_gt) + log integral exp(-f(y)) dy,

where the integral (over position in R^3 and orientation as unit quaternions on S^3) is estimated
by Adaptive Multiple Importance Sampling (AMIS): T iterations of K' samples, positions from a
multivariate t, orientations from an angular central Gaussian (ACG), the first proposal fitted to
the Laplace approximation at the PnP optimum and each next one to all weighted samples so far;
all samples are then weighted against the mixture of the proposals. Samples are drawn without
gradient; gradients flow through f at the samples and at the target, which gives
dL/dtheta = df(y_gt)/dtheta - E_p[df(y)/dtheta] (the paper's eq. 7).

The derivative regularisation (eq. 9-10) takes one differentiable Gauss-Newton step from the
detached optimum and compares the stepped pose with the truth (smooth L1 on position, quaternion
cosine distance on orientation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from drone_pose.pnp.projection import apply_update, broadcast_inputs, cost_derivatives, residuals
from drone_pose.pnp.solver import COMPUTE_DTYPE, solve_pnp

T_DOF = 3.0  # degrees of freedom of the position proposal
LOG_S3_AREA = math.log(2.0 * math.pi**2)


@dataclass(frozen=True)
class PoseSamples:
    """Detached AMIS samples: t [B,S,3] metres, R [B,S,3,3], log mixture density log_q [B,S]."""

    t: Tensor
    R: Tensor
    log_q: Tensor


def _t_log_density(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Multivariate t (3-D, T_DOF) log density of x [B,S,3] for mean [B,3], scale [B,3,3]."""
    d = 3.0
    chol = torch.linalg.cholesky(scale)
    diff = (x - mean.unsqueeze(1)).unsqueeze(-1)
    solved = torch.linalg.solve_triangular(chol.unsqueeze(1), diff, upper=False).squeeze(-1)
    mahalanobis = (solved * solved).sum(-1)
    log_det = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
    constant = math.lgamma((T_DOF + d) / 2) - math.lgamma(T_DOF / 2) - d / 2 * math.log(T_DOF * math.pi)
    return constant - 0.5 * log_det.unsqueeze(1) - (T_DOF + d) / 2 * torch.log1p(mahalanobis / T_DOF)


def _t_sample(mean: Tensor, scale: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """count samples [B,count,3] of the multivariate t."""
    batch = mean.shape[0]
    normal = torch.randn(batch, count, 3, generator=generator, dtype=mean.dtype, device=mean.device)
    chi2 = (
        torch.randn(batch, count, int(T_DOF), generator=generator, dtype=mean.dtype, device=mean.device) ** 2
    ).sum(-1)
    z = (torch.linalg.cholesky(scale).unsqueeze(1) @ normal.unsqueeze(-1)).squeeze(-1)
    return mean.unsqueeze(1) + z * torch.sqrt(T_DOF / chi2).unsqueeze(-1)


def _acg_log_density(q: Tensor, Lambda: Tensor) -> Tensor:
    """Angular central Gaussian log density on S^3 of unit quaternions q [B,S,4] for Lambda [B,4,4]."""
    inverse = torch.linalg.inv(Lambda)
    quadratic = torch.einsum("bsi,bij,bsj->bs", q, inverse, q)
    return -LOG_S3_AREA - 0.5 * torch.logdet(Lambda).unsqueeze(1) - 2.0 * torch.log(quadratic)


def _acg_sample(Lambda: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    normal = torch.randn(
        Lambda.shape[0], count, 4, generator=generator, dtype=Lambda.dtype, device=Lambda.device
    )
    z = (torch.linalg.cholesky(Lambda).unsqueeze(1) @ normal.unsqueeze(-1)).squeeze(-1)
    return z / z.norm(dim=-1, keepdim=True)


def _left_tangent(q: Tensor) -> Tensor:
    """M [B,4,3]: d q / d w for q(w) = quat(exp([w]x)) * q at w = 0, quaternions (x, y, z, w)."""
    v, w = q[:, :3], q[:, 3:4]
    eye = torch.eye(3, dtype=q.dtype, device=q.device).expand(q.shape[0], 3, 3)
    vector_part = w.unsqueeze(-1) * eye + torch.linalg.cross(eye, v.unsqueeze(1).expand_as(eye), dim=-1)
    scalar_part = -v.unsqueeze(1)  # [B,1,3]
    return 0.5 * torch.cat((vector_part.transpose(1, 2), scalar_part), dim=1)


def _regularise(matrix: Tensor, relative: float = 1e-9) -> Tensor:
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    scale = matrix.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    return 0.5 * (matrix + matrix.transpose(-1, -2)) + relative * scale[:, None, None] * eye


def _fit_acg(q: Tensor, weights: Tensor, Lambda: Tensor, steps: int = 3) -> Tensor:
    """Weighted Tyler fixed point for the ACG: Lambda = 4 sum w q q^T / (q^T Lambda^-1 q), trace 4."""
    for _ in range(steps):
        quadratic = torch.einsum("bsi,bij,bsj->bs", q, torch.linalg.inv(Lambda), q)
        coefficient = weights / quadratic.clamp_min(1e-300)
        Lambda = 4.0 * torch.einsum("bs,bsi,bsj->bij", coefficient, q, q) / coefficient.sum(-1)[:, None, None]
        Lambda = _regularise(Lambda * (4.0 / Lambda.diagonal(dim1=-2, dim2=-1).sum(-1))[:, None, None], 1e-6)
    return Lambda


def _log_integrand(x2d: Tensor, x3d: Tensor, K: Tensor, weights: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """-f(y) [B,S] for poses R [B,S,3,3], t [B,S,3] (differentiable in x2d, x3d, K, weights)."""
    batch, samples = t.shape[:2]

    def expand(v: Tensor) -> Tensor:
        return v.unsqueeze(1).expand(batch, samples, *v.shape[1:]).reshape(batch * samples, *v.shape[1:])

    r = residuals(expand(x2d), expand(x3d), expand(K), expand(weights), R.reshape(-1, 3, 3), t.reshape(-1, 3))
    return -0.5 * (r * r).sum((-1, -2)).view(batch, samples)


@torch.no_grad()
def amis_samples(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    iterations: int = 4,
    samples_per_iteration: int = 128,
    generator: torch.Generator | None = None,
) -> PoseSamples:
    """Draw AMIS samples of the pose distribution exp(-f(y)) (no gradient). Shapes as solve_pnp."""
    x2d, x3d, K, weights = (v.to(COMPUTE_DTYPE) for v in broadcast_inputs(x2d, x3d, K, weights))
    batch = x2d.shape[0]
    mode = solve_pnp(x2d, x3d, K, weights)
    _, _, gauss_newton, _, _, _ = cost_derivatives(x2d, x3d, K, weights, mode.R, mode.t, None, False)
    covariance = torch.linalg.inv(_regularise(gauss_newton, 1e-9))  # Laplace: inverse Hessian of f
    position_scale = _regularise(covariance[:, :3, :3], 1e-9)
    q_mode = roma.rotmat_to_unitquat(mode.R)
    M = _left_tangent(q_mode)
    Lambda = _regularise(
        q_mode.unsqueeze(-1) * q_mode.unsqueeze(-2) + M @ covariance[:, 3:, 3:] @ M.transpose(1, 2), 1e-9
    )
    Lambda = Lambda * (4.0 / Lambda.diagonal(dim1=-2, dim2=-1).sum(-1))[:, None, None]
    proposals: list[tuple[Tensor, Tensor, Tensor]] = []
    mean = mode.t
    t_all, q_all, log_p = x2d.new_zeros(batch, 0, 3), x2d.new_zeros(batch, 0, 4), x2d.new_zeros(batch, 0)
    for step in range(iterations):
        proposals.append((mean, position_scale, Lambda))
        t_new = _t_sample(proposals[-1][0], position_scale, samples_per_iteration, generator)
        q_new = _acg_sample(Lambda, samples_per_iteration, generator)
        R_new = roma.unitquat_to_rotmat(q_new)
        t_all, q_all = torch.cat((t_all, t_new), 1), torch.cat((q_all, q_new), 1)
        log_p = torch.cat((log_p, _log_integrand(x2d, x3d, K, weights, R_new, t_new)), 1)
        log_q = _mixture_log_density(t_all, q_all, proposals)
        if step + 1 < iterations:
            w = torch.softmax(log_p - log_q, dim=-1)
            mean = (w.unsqueeze(-1) * t_all).sum(1)
            centred = t_all - mean.unsqueeze(1)
            position_scale = _regularise(torch.einsum("bs,bsi,bsj->bij", w, centred, centred), 1e-6)
            Lambda = _fit_acg(q_all, w, Lambda)
    return PoseSamples(t=t_all, R=roma.unitquat_to_rotmat(q_all), log_q=log_q)


def _mixture_log_density(t: Tensor, q: Tensor, proposals: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """log (1/T) sum_m q_m(y) [B,S] of the equally weighted proposal mixture."""
    logs = torch.stack([_t_log_density(t, m, s) + _acg_log_density(q, L) for m, s, L in proposals], dim=0)
    return torch.logsumexp(logs, dim=0) - math.log(len(proposals))


def monte_carlo_kl_loss(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor | None,
    R_gt: Tensor,
    t_gt: Tensor,
    samples: PoseSamples,
) -> tuple[Tensor, Tensor, Tensor]:
    """L_KL [B] = L_tgt + L_pred with L_pred = log mean_j exp(-f(y_j)) / q(y_j) over the fixed samples.

    Returns (L_KL, L_tgt, L_pred), each [B], differentiable in x2d, x3d, K and weights.
    """
    x2d, x3d, K, weights = broadcast_inputs(x2d, x3d, K, weights)
    dtype = samples.t.dtype
    x2d, x3d, K, weights = (v.to(dtype) for v in (x2d, x3d, K, weights))
    target = -_log_integrand(x2d, x3d, K, weights, R_gt.to(dtype).unsqueeze(1), t_gt.to(dtype).unsqueeze(1))[
        :, 0
    ]
    log_p = _log_integrand(x2d, x3d, K, weights, samples.R, samples.t)
    predicted = torch.logsumexp(log_p - samples.log_q, dim=-1) - math.log(samples.t.shape[1])
    return target + predicted, target, predicted


def epro_pnp_loss(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor,
    R_gt: Tensor,
    t_gt: Tensor,
    iterations: int = 4,
    samples_per_iteration: int = 128,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean Monte Carlo KL pose loss [] (T = 4 AMIS iterations of K' = 128 samples by default).

    x2d [B,N,2] px, x3d [N,3] or [B,N,3] m, K [3,3] or [B,3,3], weights [B,N] or [B,N,2] (learned,
    positive), R_gt [B,3,3], t_gt [B,3]. Gradients reach x2d, x3d, K and weights.
    """
    samples = amis_samples(
        x2d.detach(), x3d.detach(), K.detach(), weights.detach(), iterations, samples_per_iteration, generator
    )
    loss, _, _ = monte_carlo_kl_loss(x2d, x3d, K, weights, R_gt, t_gt, samples)
    return loss.to(x2d.dtype).mean()


def derivative_regularization_loss(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor | None,
    R_gt: Tensor,
    t_gt: Tensor,
    R_star: Tensor | None = None,
    t_star: Tensor | None = None,
    epsilon: float = 1e-6,
    beta: float = 0.01,
) -> Tensor:
    """L_reg [] = l(y* + dy, y_gt) with dy one differentiable Gauss-Newton step at the detached optimum y*.

    dy = -(J^T J + epsilon I)^-1 J^T F(y*). l = smooth L1 (beta, metres) on position plus
    1 - |<q, q_gt>| on orientation. y* = (R_star, t_star) if given, else solve_pnp's solution.
    """
    x2d, x3d, K, weights = broadcast_inputs(x2d, x3d, K, weights)
    if R_star is None or t_star is None:
        mode = solve_pnp(x2d.detach(), x3d.detach(), K.detach(), weights.detach())
        R_star, t_star = mode.R, mode.t
    R_star, t_star = R_star.detach(), t_star.detach()
    _, gradient, gauss_newton, _, _, _ = cost_derivatives(x2d, x3d, K, weights, R_star, t_star, None, False)
    eye = torch.eye(6, dtype=gauss_newton.dtype, device=gauss_newton.device)
    step = -torch.linalg.solve(gauss_newton + epsilon * eye, gradient.unsqueeze(-1)).squeeze(-1)
    R, t = apply_update(R_star, t_star, step)
    position = torch.nn.functional.smooth_l1_loss(t, t_gt.to(t.dtype), beta=beta, reduction="none").sum(-1)
    cosine = (roma.rotmat_to_unitquat(R) * roma.rotmat_to_unitquat(R_gt.to(R.dtype))).sum(-1).abs()
    return (position + (1.0 - cosine)).mean()
