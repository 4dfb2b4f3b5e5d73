"""Differentiable multi-view PnP: implicit gradients of the fused rig pose (as drone_pose.pnp.layer).

At the optimum y* of the multi-view cost the gradient g(x, y*) w.r.t. the rig pose step is 0, so
dL/dx = -v^T dg/dx with H v = dL/dy*, H the exact Hessian ("exact") or the Gauss-Newton one with
the residuals' second-order terms dropped ("gauss_newton", BPnP-faster). Gradients reach x2d,
x3d, K, weights and the extrinsics cam_from_rig.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from drone_pose.fusion.multiview_pnp import (
    broadcast_multiview,
    multiview_cost_derivatives,
    multiview_pnp,
    multiview_residuals_and_jacobian,
)
from drone_pose.fusion.rig import split_extrinsics
from drone_pose.pnp.layer import GradientMode, pose_gradient_to_tangent
from drone_pose.pnp.projection import huber_weights
from drone_pose.pnp.result import PnPResult
from drone_pose.pnp.solver import COMPUTE_DTYPE


class _ImplicitMultiviewPnP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, x3d, K, weights, cam_from_rig, R, t, converged, mode, huber):
        ctx.save_for_backward(x2d, x3d, K, weights, cam_from_rig, R, t, converged)
        ctx.mode, ctx.huber = mode, huber
        return R.clone(), t.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_R, grad_t):
        *problem, R, t, converged = ctx.saved_tensors
        problem64 = [v.detach().to(COMPUTE_DTYPE) for v in problem]
        R64, t64 = R.detach().to(COMPUTE_DTYPE), t.detach().to(COMPUTE_DTYPE)
        used = (problem64[3] > 0).any(-1, keepdim=True)
        problem64[0] = torch.where(used, problem64[0], torch.zeros_like(problem64[0]))  # NaN where dropped
        upstream = pose_gradient_to_tangent(grad_R.to(COMPUTE_DTYPE), grad_t.to(COMPUTE_DTYPE), R64)
        exact = ctx.mode == "exact"
        cam_R, cam_t = split_extrinsics(problem64[4])
        _, _, gauss_newton, hessian, _, _ = multiview_cost_derivatives(
            *problem64[:4], cam_R, cam_t, R64, t64, ctx.huber, exact
        )
        v, info = torch.linalg.solve_ex(hessian if exact else gauss_newton, upstream.unsqueeze(-1))
        usable = converged & (info == 0) & torch.isfinite(v).flatten(1).all(1)
        v = torch.where(usable[:, None, None], v, torch.zeros_like(v)).squeeze(-1)
        inputs = [
            x.clone().requires_grad_(needs)
            for x, needs in zip(problem64, ctx.needs_input_grad[:5], strict=True)
        ]
        wanted = [x for x in inputs if x.requires_grad]
        if not wanted:
            return (None,) * 10
        with torch.enable_grad():
            x2d, x3d, K, weights, cam_from_rig = inputs
            cam_R, cam_t = split_extrinsics(cam_from_rig)
            if exact:
                target = multiview_cost_derivatives(
                    x2d, x3d, K, weights, cam_R, cam_t, R64, t64, ctx.huber, False
                )[1]
                cotangent = -v
            else:
                r, J = multiview_residuals_and_jacobian(x2d, x3d, K, weights, cam_R, cam_t, R64, t64)
                irls = huber_weights((r.detach() ** 2).sum(-1), ctx.huber)[1]
                target = r
                cotangent = -(irls[..., None] * (J.detach() @ v[:, None, :, None]).squeeze(-1))
            grads = iter(torch.autograd.grad(target, wanted, cotangent, allow_unused=True))
        out = []
        for original, x in zip(problem, inputs, strict=True):
            g = next(grads) if x.requires_grad else None
            if g is not None:
                mask = usable.view(-1, *([1] * (g.ndim - 1)))
                g = torch.where(mask, g, torch.zeros_like(g)).to(original.dtype)
            out.append(g)
        return (*out, None, None, None, None, None)


def multiview_pnp_layer(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    cam_from_rig: Tensor,
    weights: Tensor | None = None,
    grad: GradientMode = "exact",
    huber: float | None = None,
    init: tuple[Tensor, Tensor] | None = None,
    **solver_options,
) -> PnPResult:
    """`multiview_pnp` whose R [B,3,3] and t [B,3] (rig<-drone) carry gradients w.r.t. x2d, x3d, K,
    weights and cam_from_rig. Shapes as in `multiview_pnp`; grad "exact" or "gauss_newton".
    Samples that did not converge get zero gradient."""
    if grad not in ("exact", "gauss_newton"):
        raise ValueError(f"grad must be 'exact' or 'gauss_newton', got {grad!r}")
    x2d, x3d, K, cam_from_rig, weights = broadcast_multiview(x2d, x3d, K, cam_from_rig, weights)
    problem = (x2d, x3d, K, weights, cam_from_rig)  # the order backward unpacks
    result = multiview_pnp(
        x2d.detach(),
        x3d.detach(),
        K.detach(),
        cam_from_rig.detach(),
        weights.detach(),
        huber=huber,
        init=init,
        **solver_options,
    )
    R, t = _ImplicitMultiviewPnP.apply(*problem, result.R, result.t, result.converged, grad, huber)
    return dataclasses.replace(result, R=R, t=t)
