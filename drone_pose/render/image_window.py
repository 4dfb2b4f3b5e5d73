"""Pixel grids placed in an image: render windows around a drone and silhouette maps on them.

A grid of `width` x `height` pixels is placed by the image position of its first pixel centre and
its pixel size: grid pixel (column c, row r) has its centre at image pixel
origin + pixel_size * (c, r). The pixel size is one number per grid, or one per axis (x, y) for a
grid stretched differently along x and y (a heatmap of an image resized anisotropically). Pixel
centres are at integer coordinates in both grids, as in
drone_pose.data.rasterize and drone_pose.nets.heatmap_codec (a heatmap at stride s is the grid
with origin (s - 1) / 2 and pixel_size s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ImageWindow:
    """B grids of height x width pixels: origin [B,2] image px (x, y) of pixel (0, 0)'s centre,
    pixel_size [B] image px per grid pixel (> 0), or [B,2] image px per grid pixel along x and y
    (pixel_size_xy gives [B,2] either way)."""

    origin: Tensor
    pixel_size: Tensor
    width: int
    height: int

    @classmethod
    def around_box(cls, box: Tensor, resolution: int, margin: float = 0.15) -> ImageWindow:
        """Square windows of resolution x resolution pixels around boxes [B,4] (x_min, y_min,
        x_max, y_max) image px, enlarged by `margin` of the longer side on every side."""
        centre = 0.5 * (box[:, :2] + box[:, 2:])
        side = (box[:, 2:] - box[:, :2]).amax(-1).clamp_min(1.0) * (1.0 + 2.0 * margin)
        pixel_size = side / resolution
        origin = centre - 0.5 * (side - pixel_size)[:, None]
        return cls(origin, pixel_size, resolution, resolution)

    @classmethod
    def heatmap(
        cls, batch: int, width: int, height: int, stride: float | tuple[float, float], device=None
    ) -> ImageWindow:
        """The grid of heatmaps at 1/stride of the image resolution (heatmap_codec's convention);
        stride (x, y) for different strides along x and y."""
        if isinstance(stride, tuple):
            step = torch.tensor([float(stride[0]), float(stride[1])], device=device).expand(batch, 2)
            return cls(0.5 * (step - 1.0), step.clone(), width, height)
        origin = torch.full((batch, 2), 0.5 * (stride - 1.0), device=device)
        return cls(origin, torch.full((batch,), float(stride), device=device), width, height)

    @property
    def pixel_size_xy(self) -> Tensor:
        """Image px per grid pixel along x and y [B,2]."""
        if self.pixel_size.dim() == 2:
            return self.pixel_size
        return self.pixel_size[:, None].expand(-1, 2)

    def coarsened(self, factor: int) -> ImageWindow:
        """The same image area on a grid `factor` times coarser (width and height divisible by it):
        each coarse pixel covers factor x factor pixels of this grid."""
        if factor < 1 or self.width % factor or self.height % factor:
            raise ValueError(f"cannot coarsen a {self.width}x{self.height} grid by {factor}")
        origin = self.origin + 0.5 * (factor - 1) * self.pixel_size_xy
        return ImageWindow(origin, self.pixel_size * factor, self.width // factor, self.height // factor)

    def intrinsics(self, K: Tensor) -> Tensor:
        """Intrinsics [B,3,3] of the window for image intrinsics K [B,3,3] (or [3,3]): a camera
        point projects to window pixels (image px - origin) / pixel_size."""
        K = K.expand(self.origin.shape[0], 3, 3)
        scale = 1.0 / self.pixel_size_xy.to(K.dtype)
        to_window = torch.zeros_like(K)
        to_window[:, 0, 0] = scale[:, 0]
        to_window[:, 1, 1] = scale[:, 1]
        to_window[:, :2, 2] = -self.origin.to(K.dtype) * scale
        to_window[:, 2, 2] = 1.0
        return to_window @ K

    def to_image(self, grid_xy: Tensor) -> Tensor:
        """Grid pixel coordinates [B,...,2] -> image pixels [B,...,2]."""
        shape = (-1, *(1,) * (grid_xy.dim() - 2), 2)
        return self.origin.view(shape) + self.pixel_size_xy.reshape(shape) * grid_xy

    def from_image(self, image_xy: Tensor) -> Tensor:
        """Image pixels [B,...,2] -> grid pixel coordinates [B,...,2]."""
        shape = (-1, *(1,) * (image_xy.dim() - 2), 2)
        return (image_xy - self.origin.view(shape)) / self.pixel_size_xy.reshape(shape)

    def pixel_centres(self) -> Tensor:
        """Image coordinates [B,height,width,2] of the grid's pixel centres."""
        rows = torch.arange(self.height, dtype=self.origin.dtype, device=self.origin.device)
        columns = torch.arange(self.width, dtype=self.origin.dtype, device=self.origin.device)
        grid = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), -1)  # [h,w,2] (x, y)
        return self.to_image(grid.expand(self.origin.shape[0], -1, -1, -1))


@dataclass(frozen=True)
class SilhouetteMap:
    """Drone silhouettes on pixel grids: probability [B,h,w] in [0, 1] (1 = drone) on `grid`."""

    probability: Tensor
    grid: ImageWindow

    def resample(self, window: ImageWindow, max_samples: int = 4) -> Tensor:
        """The silhouettes [B,window.height,window.width] on the window's pixels, 0 outside this map.

        Where a window pixel spans several map pixels, the map is averaged over up to
        max_samples x max_samples bilinear samples inside it (area averaging, no aliasing).
        """
        ratio = float((window.pixel_size_xy / self.grid.pixel_size_xy.to(window.pixel_size)).amax())
        samples = max(1, min(max_samples, math.ceil(ratio - 1e-6)))
        if samples > 1:
            sub_size = window.pixel_size / samples
            fine = ImageWindow(
                window.origin - 0.5 * (window.pixel_size_xy - window.pixel_size_xy / samples),
                sub_size,
                window.width * samples,
                window.height * samples,
            )
            return F.avg_pool2d(self._sample(fine)[:, None], samples)[:, 0]
        return self._sample(window)

    def _sample(self, window: ImageWindow) -> Tensor:
        """Bilinear samples [B,h,w] of the map at the window's pixel centres."""
        points = self.grid.from_image(window.pixel_centres().to(self.probability.dtype))
        size = torch.tensor(
            [max(self.grid.width - 1, 1), max(self.grid.height - 1, 1)],
            dtype=points.dtype,
            device=points.device,
        )
        normalised = 2.0 * points / size - 1.0
        sampled = F.grid_sample(
            self.probability[:, None], normalised, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return sampled[:, 0]
