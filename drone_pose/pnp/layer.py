"""Differentiable PnP layer: gradients of the solver's optimum by the implicit function theorem.

At the optimum y* of f(x, y) = 0.5 sum_i rho(||r_i(x, y)||^2) the gradient g(x, y*) = df/dy = 0,
so dy*/dx = -H^-1 d g/dx with H = d g/dy. For an upstream gradient dL/dy*, the layer solves
H v = dL/dy* once per sample and returns dL/dx = -v^T d g/dx as one vector-Jacobian product.
- grad="exact": H is the full Hessian and d g/dx is exact (matches finite differences of solve_pnp).
- grad="gauss_newton": BPnP-faster; the second-order terms of the residuals are dropped from both.
The pose y is (t, w) with w a rotation vector applied on the left: R = exp([w]x) R*.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from drone_pose.pnp.projection import (
    broadcast_inputs,
    cost_derivatives,
    huber_weights,
    residuals_and_jacobian,
)
from drone_pose.pnp.result import PnPResult
from drone_pose.pnp.solver import COMPUTE_DTYPE, solve_pnp

GradientMode = Literal["exact", "gauss_newton"]


def pose_gradient_to_tangent(grad_R: Tensor, grad_t: Tensor, R: Tensor) -> Tensor:
    """dL/d(t, w) [B,6] from dL/dR [B,3,3] and dL/dt [B,3] at R, for R = exp([w]x) R at w = 0."""
    A = grad_R @ R.transpose(-1, -2)
    grad_w = torch.stack((A[:, 2, 1] - A[:, 1, 2], A[:, 0, 2] - A[:, 2, 0], A[:, 1, 0] - A[:, 0, 1]), dim=-1)
    return torch.cat((grad_t, grad_w), dim=-1)


class _ImplicitPnP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, x3d, K, weights, R, t, converged, mode, huber):
        ctx.save_for_backward(x2d, x3d, K, weights, R, t, converged)
        ctx.mode, ctx.huber = mode, huber
        return R.clone(), t.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_R, grad_t):
        x2d, x3d, K, weights, R, t, converged = ctx.saved_tensors
        f64 = [v.detach().to(COMPUTE_DTYPE) for v in (x2d, x3d, K, weights, R, t)]
        x2d64, x3d64, K64, weights64, R64, t64 = f64
        upstream = pose_gradient_to_tangent(grad_R.to(COMPUTE_DTYPE), grad_t.to(COMPUTE_DTYPE), R64)
        exact = ctx.mode == "exact"
        _, _, gauss_newton, hessian, _, J = cost_derivatives(
            x2d64, x3d64, K64, weights64, R64, t64, ctx.huber, exact
        )
        H = hessian if exact else gauss_newton
        v, info = torch.linalg.solve_ex(H, upstream.unsqueeze(-1))
        usable = converged & (info == 0) & torch.isfinite(v).flatten(1).all(1)
        v = torch.where(usable[:, None, None], v, torch.zeros_like(v)).squeeze(-1)
        if ctx.huber is None and not any(ctx.needs_input_grad[1:4]):
            # Only x2d: g = sum J_i^T r_i with r_i = w_i (pi_i - x_i) and J free of x, so
            # dL/dx_i = -(dg/dx_i)^T v = w_i * (J_i v), exactly, in both modes.
            grad_x2d = _masked(weights64 * (J @ v.unsqueeze(-1)).view_as(x2d64), usable)
            return (grad_x2d.to(x2d.dtype), None, None, None, None, None, None, None, None)

        inputs = [
            v_.clone().requires_grad_(needs)
            for v_, needs in zip((x2d64, x3d64, K64, weights64), ctx.needs_input_grad[:4], strict=True)
        ]
        with torch.enable_grad():
            if exact:
                gradient = cost_derivatives(*inputs, R64, t64, ctx.huber, False)[1]  # g(x, y*)
                target, cotangent = gradient, -v
            else:
                r, J, _ = residuals_and_jacobian(*inputs, R64, t64)
                irls = _irls(r.detach(), ctx.huber)
                # BPnP-faster: d g/dx ~ J^T W d r/dx with J and the IRLS weights held constant.
                target = r
                cotangent = -(irls[..., None] * (J.detach() @ v[:, None, :, None]).squeeze(-1))
            wanted = [x for x in inputs if x.requires_grad]
            grads = iter(torch.autograd.grad(target, wanted, cotangent, allow_unused=True) if wanted else [])
        out = []
        for original, x in zip((x2d, x3d, K, weights), inputs, strict=True):
            g = next(grads) if x.requires_grad else None
            out.append(None if g is None else _masked(g, usable).to(original.dtype))
        return (*out, None, None, None, None, None)


def _masked(gradient: Tensor, usable: Tensor) -> Tensor:
    """Zero the per-sample gradient [B,...] where the solve is unusable (its values may be inf/NaN)."""
    return torch.where(usable.view(-1, *([1] * (gradient.ndim - 1))), gradient, torch.zeros_like(gradient))


def _irls(r: Tensor, huber: float | None) -> Tensor:
    """IRLS weights rho'(||r_i||^2) [B,N] of residuals r [B,N,2]."""
    return huber_weights((r * r).sum(-1), huber)[1]


def pnp_layer(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    grad: GradientMode = "exact",
    huber: float | None = None,
    init: tuple[Tensor, Tensor] | None = None,
    **solver_options,
) -> PnPResult:
    """`solve_pnp` whose R [B,3,3] and t [B,3] carry gradients w.r.t. x2d, x3d, K and weights.

    Shapes as in `solve_pnp`. grad="exact" (full second-order implicit gradient) or
    "gauss_newton" (BPnP-faster). Samples that did not converge get zero gradient.
    """
    if grad not in ("exact", "gauss_newton"):
        raise ValueError(f"grad must be 'exact' or 'gauss_newton', got {grad!r}")
    x2d_b, x3d_b, K_b, weights_b = broadcast_inputs(x2d, x3d, K, weights)
    result = solve_pnp(
        x2d_b.detach(),
        x3d_b.detach(),
        K_b.detach(),
        weights_b.detach(),
        init=init,
        huber=huber,
        **solver_options,
    )
    R, t = _ImplicitPnP.apply(x2d_b, x3d_b, K_b, weights_b, result.R, result.t, result.converged, grad, huber)
    return dataclasses.replace(result, R=R, t=t)
