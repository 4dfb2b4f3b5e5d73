"""Silhouettes of the mask head (drone_pose.nets.mask_head): training targets, where a predicted
map lies in the original image, and how well it matches a true mask.

Grids follow drone_pose.render.image_window: pixel centres at integers, a heatmap at stride s of an
image is the grid with origin (s - 1) / 2 and pixel size s. The estimator places its maps with the
mapping its keypoints use back to the original image (heatmap_codec.heatmap_to_image with the
stride original size / heatmap size per axis), so silhouettes and keypoints agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from drone_pose.nets.zoom import ZoomPlan
from drone_pose.render.image_window import ImageWindow, SilhouetteMap


def mask_targets(full_mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """The mask head's soft targets [B,h,w] in [0, 1]: masks [B,H,W] (1 = drone) area-averaged over
    each heatmap pixel of a grid of size (h, w) at the network's integer stride s (h = ceil(H / s),
    so s = ceil(H / h); the network pads its input with zeros on the right and bottom, and so does
    this)."""
    height, width = int(size[0]), int(size[1])
    stride_y = max(math.ceil(full_mask.shape[-2] / height), 1)
    stride_x = max(math.ceil(full_mask.shape[-1] / width), 1)
    masks = full_mask.float()[:, None, : height * stride_y, : width * stride_x]
    masks = F.pad(masks, (0, width * stride_x - masks.shape[-1], 0, height * stride_y - masks.shape[-2]))
    return F.avg_pool2d(masks, (stride_y, stride_x))[:, 0]


def image_grid(
    heatmap_size: tuple[int, int], image_size: tuple[int, int], batch: int, device=None
) -> ImageWindow:
    """The grid [B] of heatmaps of heatmap_size (w, h) on images of image_size (W, H): strides W / w and
    H / h, as the keypoints are mapped (one pixel size when they agree, else one per axis)."""
    stride_x = image_size[0] / heatmap_size[0]
    stride_y = image_size[1] / heatmap_size[1]
    stride = stride_x if stride_x == stride_y else (stride_x, stride_y)
    return ImageWindow.heatmap(batch, heatmap_size[0], heatmap_size[1], stride, device=device)


def window_grid(plan: ZoomPlan, heatmap_size: tuple[int, int]) -> ImageWindow:
    """The grid [M] of the second pass's heatmaps of heatmap_size (w, h) in the original image: window
    pixel u samples image point centre + (u - (W - 1) / 2) * scale (drone_pose.nets.zoom), and
    heatmap pixel c is window pixel s c + (s - 1) / 2."""
    width, height = plan.size
    stride = plan.windows.scale.new_tensor([width / heatmap_size[0], height / heatmap_size[1]])
    half = plan.windows.scale.new_tensor([(width - 1) / 2, (height - 1) / 2])
    scale = plan.windows.scale
    origin = plan.windows.centre + ((stride - 1.0) / 2 - half) * scale
    pixel_size = stride * scale  # [M,2]
    if bool((pixel_size[:, 0] == pixel_size[:, 1]).all()):
        pixel_size = pixel_size[:, 0].contiguous()
    return ImageWindow(origin, pixel_size, heatmap_size[0], heatmap_size[1])


def zoomed_silhouettes(first: SilhouetteMap, plan: ZoomPlan, window_probability: Tensor) -> SilhouetteMap:
    """The first pass's maps [B] with those of the second pass's windows [M,h',w'] (plan.index) in
    their place. Maps of both sizes are held as one tensor: each is padded with zeros (no drone, as
    outside a map) on its right and bottom to the larger width and height."""
    grid = first.grid
    height = max(grid.height, window_probability.shape[-2])
    width = max(grid.width, window_probability.shape[-1])
    probability = _pad(first.probability, height, width).clone()
    origin = grid.origin.clone()
    window = window_grid(plan, (window_probability.shape[-1], window_probability.shape[-2]))
    anisotropic = grid.pixel_size.dim() == 2 or window.pixel_size.dim() == 2
    pixel_size = grid.pixel_size_xy.clone() if anisotropic else grid.pixel_size.clone()
    index = plan.index.to(probability.device)
    probability[index] = _pad(window_probability.to(probability.dtype), height, width)
    origin[index] = window.origin.to(origin.device, origin.dtype)
    pixel_size[index] = (window.pixel_size_xy if anisotropic else window.pixel_size).to(
        pixel_size.device, pixel_size.dtype
    )
    return SilhouetteMap(probability, ImageWindow(origin, pixel_size, width, height))


def _pad(probability: Tensor, height: int, width: int) -> Tensor:
    return F.pad(probability, (0, width - probability.shape[-1], 0, height - probability.shape[-2]))


def on_image(silhouette: SilhouetteMap, width: int, height: int) -> Tensor:
    """The silhouettes [B,height,width] at the pixels of images width x height (bilinear, 0 outside
    the maps)."""
    count = silhouette.probability.shape[0]
    device = silhouette.probability.device
    pixels = ImageWindow(
        torch.zeros(count, 2, device=device), torch.ones(count, device=device), width, height
    )
    return silhouette.resample(pixels)


def silhouette_iou(probability: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """IoU [B] of predicted silhouettes probability [B,H,W] in [0, 1] thresholded at 0.5 against
    masks [B,H,W] (> 0.5 = drone), and the soft IoU [B] sum(p m) / sum(p + m - p m) of the
    probabilities; NaN where both are empty."""
    p, m = probability.float(), mask.float()
    predicted, true = p > 0.5, m > 0.5
    union = (predicted | true).sum((-1, -2)).float()
    iou = (predicted & true).sum((-1, -2)).float() / union
    overlap = (p * m).sum((-1, -2))
    soft_union = (p + m - p * m).sum((-1, -2))
    soft = torch.where(soft_union > 0, overlap / soft_union.clamp_min(1e-12), torch.nan)
    return torch.where(union > 0, iou, torch.nan), soft


def take_silhouettes(silhouette: SilhouetteMap | None, index: Tensor) -> SilhouetteMap | None:
    """The maps `index` [M] (int64) of a batch of silhouettes, in that order (None stays None)."""
    if silhouette is None:
        return None
    grid = silhouette.grid
    return SilhouetteMap(
        silhouette.probability[index],
        ImageWindow(grid.origin[index], grid.pixel_size[index], grid.width, grid.height),
    )


def concatenate_silhouettes(silhouettes: list[SilhouetteMap | None]) -> SilhouetteMap | None:
    """One batch of the maps of several batches, in order, each padded with zeros on its right and
    bottom to the largest grid; None when any is None (a network without the mask head)."""
    if not silhouettes or any(s is None for s in silhouettes):
        return None
    maps = [s for s in silhouettes if s is not None]
    height = max(s.grid.height for s in maps)
    width = max(s.grid.width for s in maps)
    anisotropic = any(s.grid.pixel_size.dim() == 2 for s in maps)
    sizes = [s.grid.pixel_size_xy if anisotropic else s.grid.pixel_size for s in maps]
    return SilhouetteMap(
        torch.cat([_pad(s.probability, height, width) for s in maps]),
        ImageWindow(torch.cat([s.grid.origin for s in maps]), torch.cat(sizes), width, height),
    )
