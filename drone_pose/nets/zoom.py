"""Zoomed second pass: re-run the keypoint network on a window around a small drone, enlarged.

Heatmap keypoints have an error of about a pixel of the network input whatever the drone's size,
so a far drone's pose suffers most (figures in docs/experiments.md). The second pass takes the
first pass's confident keypoints, centres a window (the network's input size, or `window`) on their
bounding box and enlarges it (bilinear) so that the box diagonal becomes about `target_px` network
pixels, at most `max_zoom` times; the keypoints found there are mapped back to the original image.
A window smaller than the network input, such as the training crop the network learnt zoomed
drones on, costs less for the same accuracy (docs/experiments.md). Drones already at least
`target_px` large keep the first pass. Everything is batched tensor work on the images' device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from drone_pose.nets.heatmap_codec import decode_heatmaps, heatmap_to_image


@dataclass(frozen=True)
class ZoomSettings:
    """target_px: drone size (keypoint bounding-box diagonal, network-input pixels) the window is
    enlarged to; max_zoom: largest enlargement; min_keypoints: confident keypoints a window needs;
    window: (width, height) of the second pass's window in network pixels, None for the network
    input size."""

    target_px: float = 110.0
    max_zoom: float = 3.0
    min_keypoints: int = 2
    window: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.target_px <= 0 or self.max_zoom < 1 or self.min_keypoints < 2:
            raise ValueError(f"zoom needs target_px > 0, max_zoom >= 1 and min_keypoints >= 2, got {self}")
        if self.window is not None and not (
            len(self.window) == 2 and all(isinstance(v, int) and v >= 16 for v in self.window)
        ):
            raise ValueError(f"zoom window must be (width, height), integers >= 16, got {self.window!r}")

    @classmethod
    def from_dict(cls, spec: dict | None) -> ZoomSettings | None:
        """Settings from a checkpoint's input.zoom entry ({target_px, max_zoom[, window]}); None when
        absent."""
        if not spec:
            return None
        window = spec.get("window")
        return cls(
            target_px=float(spec["target_px"]),
            max_zoom=float(spec["max_zoom"]),
            window=None if window is None else tuple(window),
        )

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"target_px": self.target_px, "max_zoom": self.max_zoom}
        if self.window is not None:
            spec["window"] = list(self.window)
        return spec


@dataclass(frozen=True)
class ZoomWindows:
    """centre [B,2] image pixels; scale [B,2] image pixels per window pixel along x and y; active [B]
    bool (zoom > 1)."""

    centre: Tensor
    scale: Tensor
    active: Tensor


def zoom_windows(
    keypoints: Tensor,
    confident: Tensor,
    image_to_network: tuple[float, float],
    settings: ZoomSettings,
) -> ZoomWindows:
    """Windows for keypoints [B,K,2] (image px) of which confident [B,K] bool count.

    image_to_network: network-input pixels per image pixel along x and y. The window is isotropic
    in image pixels: the drone keeps its shape even when the first pass's resize stretched it.
    """
    enough = confident.sum(-1) >= settings.min_keypoints
    mask = confident.unsqueeze(-1)
    low = torch.where(mask, keypoints, torch.full_like(keypoints, float("inf"))).amin(1)
    high = torch.where(mask, keypoints, torch.full_like(keypoints, float("-inf"))).amax(1)
    low, high = torch.where(enough[:, None], low, 0.0), torch.where(enough[:, None], high, 0.0)
    ratio = keypoints.new_tensor(image_to_network)
    size = ((high - low) * ratio).norm(dim=-1)
    zoom = (settings.target_px / size.clamp_min(1.0)).clamp(1.0, settings.max_zoom)
    active = enough & (zoom > 1.0)
    scale = (1.0 / (zoom * ratio.mean()))[:, None].expand(-1, 2)
    return ZoomWindows(centre=(low + high) / 2, scale=scale, active=active)


def crop_windows(images: Tensor, windows: ZoomWindows, size: tuple[int, int]) -> Tensor:
    """Bilinear windows [B,C,H,W] of images [B,C,h,w]; size (W, H) window pixels; borders repeat.

    Window pixel (u, v) samples image point centre + ((u, v) - ((W-1)/2, (H-1)/2)) * scale, with
    pixel centres at integers in both grids.
    """
    width, height = size
    source_height, source_width = images.shape[-2:]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    centre = windows.centre.to(images.device, dtype)
    scale = windows.scale.to(images.device, dtype)
    u = torch.arange(width, device=images.device, dtype=dtype) - (width - 1) / 2
    v = torch.arange(height, device=images.device, dtype=dtype) - (height - 1) / 2
    x = centre[:, 0, None] + u * scale[:, 0, None]  # [B,W] image px
    y = centre[:, 1, None] + v * scale[:, 1, None]  # [B,H]
    grid_x = (2 * x + 1) / source_width - 1  # align_corners=False normalisation
    grid_y = (2 * y + 1) / source_height - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    return F.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)


def window_to_image(points: Tensor, windows: ZoomWindows, size: tuple[int, int]) -> Tensor:
    """Window pixels [B,K,2] -> image pixels (inverse of the crop_windows sampling)."""
    width, height = size
    half = points.new_tensor([(width - 1) / 2, (height - 1) / 2])
    centre = windows.centre.to(points.device, points.dtype)
    scale = windows.scale.to(points.device, points.dtype)
    return centre[:, None, :] + (points - half) * scale[:, None, :]


def locate_heatmaps(heatmaps: Tensor, image_width: int) -> tuple[Tensor, Tensor]:
    """Decoded keypoints [N,K,2] (pixels of images `image_width` wide) and confidences [N,K] of
    heatmaps [N,K,h,w]."""
    xy, confidences = decode_heatmaps(heatmaps.float())
    return heatmap_to_image(xy, image_width / heatmaps.shape[-1]), confidences


def heatmap_locator(predict: Callable[[Tensor], Tensor]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """locate() for zoom_refine from a heatmap predictor (images [N,3,H,W] in [0,1] -> [N,K,h,w])."""

    def locate(images: Tensor) -> tuple[Tensor, Tensor]:
        return locate_heatmaps(predict(images), images.shape[-1])

    return locate


@dataclass(frozen=True)
class ZoomPlan:
    """The second pass of a batch of B images: active [B] bool, the images it enlarges; index [M]
    int64, their numbers; windows [M] (image px) and size (width, height) network px of their
    windows; crops [M,3,H,W], the windows sampled (the network's second-pass input)."""

    active: Tensor
    index: Tensor
    windows: ZoomWindows
    size: tuple[int, int]
    crops: Tensor


def plan_zoom(
    images: Tensor,
    network_images: Tensor,
    keypoints: Tensor,
    confidences: Tensor,
    min_confidence: float,
    settings: ZoomSettings,
) -> ZoomPlan:
    """The windows of the second pass and their crops (arguments as zoom_refine's)."""
    height, width = network_images.shape[-2:]
    image_to_network = (width / images.shape[-1], height / images.shape[-2])
    window = settings.window or (width, height)
    windows = zoom_windows(keypoints, confidences >= min_confidence, image_to_network, settings)
    index = windows.active.nonzero().squeeze(-1)
    chosen = ZoomWindows(windows.centre[index], windows.scale[index], windows.active[index])
    if index.numel() == 0:
        crops = network_images.new_zeros((0, network_images.shape[1], window[1], window[0]))
    elif bool((chosen.scale > 1.0).any()):  # the window would shrink the original: sample the resized one
        ratio = chosen.centre.new_tensor(image_to_network)
        on_network = ZoomWindows((chosen.centre + 0.5) * ratio - 0.5, chosen.scale * ratio, chosen.active)
        crops = crop_windows(network_images[index], on_network, window)
    else:
        crops = crop_windows(images[index], chosen, window)
    return ZoomPlan(windows.active, index, chosen, window, crops)


def merge_zoomed(
    plan: ZoomPlan, keypoints: Tensor, confidences: Tensor, window_points: Tensor, window_confidences: Tensor
) -> tuple[Tensor, Tensor]:
    """The first pass's keypoints [B,K,2] image px and confidences [B,K] with those of the planned
    windows (window_points [M,K,2] window px, window_confidences [M,K]) in their place."""
    keypoints, confidences = keypoints.clone(), confidences.clone()
    keypoints[plan.index] = window_to_image(window_points.to(keypoints.dtype), plan.windows, plan.size)
    confidences[plan.index] = window_confidences.to(confidences.dtype)
    return keypoints, confidences


def zoom_refine(
    locate: Callable[[Tensor], tuple[Tensor, Tensor]],
    images: Tensor,
    network_images: Tensor,
    keypoints: Tensor,
    confidences: Tensor,
    min_confidence: float,
    settings: ZoomSettings,
) -> tuple[Tensor, Tensor, Tensor]:
    """The second pass: (keypoints [B,K,2] image px, confidences [B,K], zoomed [B] bool).

    locate: network-input images [N,3,H,W] in [0,1] -> (keypoints [N,K,2] network-input px,
    confidences [N,K]); images [B,3,h,w] in [0,1] at the original resolution; network_images
    [B,3,H,W] the same resized to the network input (the source for windows that would otherwise
    shrink the original, which bilinear sampling would alias); keypoints [B,K,2] and confidences
    [B,K] of the first pass, all on one device. Only zoomed images run the network again.
    """
    plan = plan_zoom(images, network_images, keypoints, confidences, min_confidence, settings)
    if plan.index.numel() == 0:
        return keypoints, confidences, plan.active
    window_points, window_confidences = locate(plan.crops)
    keypoints, confidences = merge_zoomed(plan, keypoints, confidences, window_points, window_confidences)
    return keypoints, confidences, plan.active
