"""Training losses: the heatmap loss l_h, the PnP pose losses l_proj / l_reg and the silhouette
head's l_mask.

Targets and the differentiable keypoints the pose losses use (centre of mass of each heatmap) are
the heatmap codec's (drone_pose.nets.heatmap_codec).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from drone_pose.nets.silhouette import mask_targets
from drone_pose.pnp import epnp, pnp_layer, projection_loss, regression_loss


def heatmap_loss(
    predicted: Tensor, target: Tensor, visibility: Tensor, kind: str, foreground_weight: float = 0.0
) -> Tensor:
    """l_h []: L1 or MSE per pixel averaged over visible keypoints' maps, or KL(target || softmax)
    between spatial distributions. predicted, target [B,K,h,w]; visibility [B,K].

    foreground_weight w > 0 weights L1/MSE pixels by 1 + w * target, so that the few pixels of each
    peak are not drowned by the background (faster escape from the all-zero plateau)."""
    weight = visibility.to(predicted.dtype)
    count = weight.sum().clamp_min(1.0)
    pixel_weight = 1.0 + foreground_weight * target if foreground_weight > 0 else None
    if kind in ("l1", "mse"):
        error = (predicted - target).abs() if kind == "l1" else (predicted - target) ** 2
        if pixel_weight is not None:
            error = error * pixel_weight
        per_map = error.mean((-1, -2))
    elif kind == "kl":
        log_q = F.log_softmax(predicted.flatten(2), dim=-1)
        p = target.flatten(2)
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        per_map = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1)
    else:
        raise ValueError(f"unknown heatmap loss {kind!r}")
    return (per_map * weight).sum() / count


def mask_loss(logits: Tensor, full_mask: Tensor) -> Tensor:
    """l_mask []: binary cross-entropy of silhouette logits [B,h,w] against the full masks [B,H,W]
    in [0, 1] area-averaged to the heatmap grid (soft targets; drone_pose.nets.silhouette), mean
    over pixels."""
    target = mask_targets(full_mask, logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def pose_from_keypoints(x2d: Tensor, x3d: Tensor, K: Tensor, layer: str) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable pose (R [B,3,3], t [B,3]) from keypoints [B,K,2] through the chosen layer, and
    a usable mask [B]: the solver converged (BPnP) or the pose is finite and in front (EPnP)."""
    if layer == "epnp":
        R, t = epnp(x2d.double(), x3d.double(), K.double(), all_candidates=False)
        usable = torch.isfinite(R).flatten(1).all(1) & torch.isfinite(t).all(1) & (t[:, 2] > 0)
        return R, t, usable
    grad = "exact" if layer == "bpnp_exact" else "gauss_newton"
    result = pnp_layer(x2d.double(), x3d.double(), K.double(), grad=grad)
    return result.R, result.t, result.converged


def pose_losses(
    x2d: Tensor, x2d_true: Tensor, x3d: Tensor, K: Tensor, layer: str
) -> tuple[Tensor, Tensor, int]:
    """(l_proj, l_reg) in pixels^2 for predicted keypoints x2d [B,K,2] and true keypoints [B,K,2],
    over the samples whose pose is usable, and the number of samples left out (a failed solve
    early in training must not put an infinite loss into the gradients)."""
    R, t, usable = pose_from_keypoints(x2d, x3d, K, layer)
    dropped = int((~usable).sum())
    if dropped == len(usable):
        zero = x2d.sum() * 0.0  # keeps the graph: no gradient, no NaN
        return zero, zero, dropped
    keep = usable.nonzero().squeeze(-1)
    x3d, K = x3d.double(), K.double()
    K = K[keep] if K.ndim == 3 else K
    x3d = x3d[keep] if x3d.ndim == 3 else x3d
    l_proj = projection_loss(R[keep], t[keep], x3d, K, x2d_true[keep].double())
    l_reg = regression_loss(x2d[keep].double(), R[keep], t[keep], x3d, K)
    return l_proj.float(), l_reg.float(), dropped
