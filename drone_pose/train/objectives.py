"""Training objectives: Gaussian heatmap targets, heatmap losses and the PnP pose losses.

Heatmaps are at 1/stride of the input image (pixel centres at integers in both grids). Keypoints
for the pose losses are the centre of mass of the (rectified) heatmap in a window around its peak:
its gradient is bounded by 1 / (heatmap mass), whereas the inference decoder's log-domain
soft-argmax has gradients of order 1 / h that blow up training on near-zero pixels. For a trained,
Gaussian-shaped peak the two agree to a fraction of a heatmap pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from drone_pose.nets.decoding import heatmap_to_image, image_to_heatmap
from drone_pose.pnp import epnp, pnp_layer, projection_loss, regression_loss


def gaussian_targets(
    keypoints: Tensor, visibility: Tensor, size: tuple[int, int], stride: float, sigma: float
) -> Tensor:
    """Target heatmaps [B,K,h,w] (peak 1) for keypoints [B,K,2] in image pixels; zero where not visible.

    size = (h, w) of the heatmaps; sigma in heatmap pixels.
    """
    height, width = size
    centres = image_to_heatmap(keypoints, stride)  # [B,K,2]
    ys = torch.arange(height, dtype=keypoints.dtype, device=keypoints.device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=keypoints.dtype, device=keypoints.device).view(1, 1, 1, width)
    dx = xs - centres[..., 0, None, None]
    dy = ys - centres[..., 1, None, None]
    targets = torch.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))
    return targets * visibility[..., None, None].to(targets.dtype)


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


def heatmaps_at_finest(outputs: list[Tensor], keypoints: int) -> list[Tensor]:
    """The keypoint channels of every network output (HigherHRNet: 1/4 then 1/2)."""
    return [o[:, :keypoints].float() for o in outputs]


def centre_of_mass_keypoints(heatmaps: Tensor, stride: float, radius: int = 6) -> Tensor:
    """Differentiable image-pixel keypoints [B,K,2]: centre of mass of max(h, 0) in the
    (2 radius + 1)^2 window around each heatmap's arg-max (the window is clamped to the map)."""
    batch, joints, height, width = heatmaps.shape
    flat = heatmaps.flatten(2)
    index = flat.detach().argmax(-1)
    offsets = torch.arange(-radius, radius + 1, device=heatmaps.device)
    cx = (index % width).clamp(radius, max(width - 1 - radius, radius))
    cy = (index // width).clamp(radius, max(height - 1 - radius, radius))
    xs = (cx.unsqueeze(-1) + offsets).clamp(0, width - 1)  # [B,K,2R+1]
    ys = (cy.unsqueeze(-1) + offsets).clamp(0, height - 1)
    window = flat.gather(-1, (ys.unsqueeze(-1) * width + xs.unsqueeze(-2)).flatten(-2))
    mass = window.clamp_min(0.0).view(batch, joints, 2 * radius + 1, 2 * radius + 1) + 1e-6
    total = mass.sum((-1, -2))
    x = (mass.sum(-2) * xs.to(mass.dtype)).sum(-1) / total
    y = (mass.sum(-1) * ys.to(mass.dtype)).sum(-1) / total
    return heatmap_to_image(torch.stack((x, y), dim=-1), stride)


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
