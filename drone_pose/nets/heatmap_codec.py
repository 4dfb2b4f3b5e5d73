"""The heatmap codec: keypoints <-> heatmaps, used alike by training, inference and benchmarks.

- Encode: Gaussian target heatmaps of keypoints (gaussian_targets).
- Decode for inference: windowed spatial softmax (soft-argmax) with sub-pixel accuracy
  (decode_heatmaps), described below.
- Decode for training: the centre of mass of each heatmap in a window around its peak
  (centre_of_mass_keypoints). Its gradient is bounded by 1 / (heatmap mass), whereas the
  soft-argmax's log domain has gradients of order 1 / h that blow up training on near-zero
  pixels; for a trained, Gaussian-shaped peak the two agree to a fraction of a heatmap pixel.
- Coordinates between heatmap and image pixels (heatmap_to_image, image_to_heatmap).

Inference decoding: coordinates are heatmap pixels with the centre of pixel (row i, column j) at
(x = j, y = i). Weights are a spatial softmax of beta * log(h) = normalised h^beta: scale-free (a lower peak
decodes to the same place), zero on an empty background, and, for a Gaussian heatmap of std s, a
Gaussian of std s / sqrt(beta), narrow enough for a (2R+1)^2 window around the arg-max to hold
all of its mass. Where the border would cut that window, the position comes from the quadratic
fit of log(h) through three neighbouring pixels instead (exact for Gaussians; one-sided on the
border pixel). Differentiable w.r.t. the heatmap values. Suited to peaks of std >= 1.5 heatmap
pixels (the training targets use 2); narrower peaks lose some sub-pixel accuracy.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_BETA = 6.0
DEFAULT_RADIUS = 4
_LOG_FLOOR = 1e-6


def decode_heatmaps(
    heatmaps: Tensor, beta: float = DEFAULT_BETA, radius: int = DEFAULT_RADIUS
) -> tuple[Tensor, Tensor]:
    """Keypoints xy [B,K,2] (heatmap pixels) and confidences [B,K] (peak values) of heatmaps [B,K,H,W]."""
    if heatmaps.ndim != 4 or min(heatmaps.shape[-2:]) < 3:
        raise ValueError(f"heatmaps must have shape [B, K, H>=3, W>=3], got {list(heatmaps.shape)}")
    batch, joints, height, width = heatmaps.shape
    flat = heatmaps.flatten(2)
    confidence, index = flat.max(-1)
    py, px = index // width, index % width
    log_h = torch.log(flat.clamp_min(_LOG_FLOOR))

    offsets = torch.arange(-radius, radius + 1, device=heatmaps.device)
    xs = (px.unsqueeze(-1) + offsets).clamp(0, width - 1)  # [B,K,2R+1]
    ys = (py.unsqueeze(-1) + offsets).clamp(0, height - 1)
    window = log_h.gather(-1, (ys.unsqueeze(-1) * width + xs.unsqueeze(-2)).flatten(-2))
    weights = torch.softmax(beta * window, dim=-1).view(batch, joints, 2 * radius + 1, 2 * radius + 1)
    soft_x = (weights.sum(-2) * xs.to(heatmaps.dtype)).sum(-1)
    soft_y = (weights.sum(-1) * ys.to(heatmaps.dtype)).sum(-1)

    quad_x = _quadratic_peak(log_h, px, py, width, height, dx=1, dy=0)
    quad_y = _quadratic_peak(log_h, px, py, width, height, dx=0, dy=1)
    full_x = (px >= radius) & (px <= width - 1 - radius)
    full_y = (py >= radius) & (py <= height - 1 - radius)
    x = torch.where(full_x, soft_x, quad_x)
    y = torch.where(full_y, soft_y, quad_y)
    return torch.stack((x, y), dim=-1), confidence


def _quadratic_peak(
    log_h: Tensor, px: Tensor, py: Tensor, width: int, height: int, dx: int, dy: int
) -> Tensor:
    """Vertex of the parabola through log(h) at three consecutive pixels along (dx, dy).

    The stencil is centred on the arg-max, or on its inner neighbour when the arg-max is a border
    pixel (one-sided fit); exact for Gaussian heatmaps. Needs at least 3 pixels along the axis.
    """
    size = width if dx else height
    centre = (px if dx else py).clamp(1, size - 2)
    cx, cy = (centre, py) if dx else (px, centre)
    value = lambda x, y: log_h.gather(-1, (y * width + x).unsqueeze(-1)).squeeze(-1)  # noqa: E731
    left, middle, right = value(cx - dx, cy - dy), value(cx, cy), value(cx + dx, cy + dy)
    curvature = left - 2.0 * middle + right
    offset = (
        0.5 * (left - right) / torch.where(curvature < -1e-12, curvature, torch.full_like(curvature, -1e-12))
    )
    return (centre.to(log_h.dtype) + offset.clamp(-1.5, 1.5)).clamp(-0.5, size - 0.5)


def heatmap_to_image(xy: Tensor, stride: float | Tensor) -> Tensor:
    """Heatmap-pixel coordinates [...,2] -> image pixels for heatmaps at 1/stride resolution
    (stride a number, or per axis [2] as (x, y) for an image resized to the network input).

    With pixel centres at integer coordinates in both grids: u = stride (x + 0.5) - 0.5.
    """
    return stride * (xy + 0.5) - 0.5


def image_to_heatmap(uv: Tensor, stride: float) -> Tensor:
    """Input-image pixels -> heatmap-pixel coordinates (inverse of heatmap_to_image)."""
    return (uv + 0.5) / stride - 0.5


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
