"""Pinhole camera: intrinsics validation, batched projection and back-projection.

Frames follow REP 103/105: points are expressed in the camera optical frame (x right, y down,
z forward), in metres. Pixel coordinates put the centre of pixel (row i, column j) at (u=j, v=i).
A pose (R, t) maps drone-body points into the camera frame: p_cam = R p_drone + t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from drone_pose.errors import UserError

# Pixel focal length of the UAVA set-up: 320x240 images with a 50.8 deg vertical field of view.
UAVA_WIDTH = 320
UAVA_HEIGHT = 240
UAVA_VERTICAL_FOV_DEG = 50.8


def validate_intrinsics(K: Tensor, name: str = "K") -> Tensor:
    """Check intrinsics K [..., 3, 3] and return them unchanged.

    Raises ValueError naming the problem: wrong shape, non-finite entries, a focal length that is
    not strictly positive, or a last row other than (0, 0, 1).
    """
    if not isinstance(K, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(K).__name__}")
    if K.ndim < 2 or K.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape [..., 3, 3], got {list(K.shape)}")
    if not torch.isfinite(K).all():
        raise ValueError(f"{name} contains non-finite values")
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    if (fx <= 0).any() or (fy <= 0).any():
        raise ValueError(
            f"{name} has a focal length <= 0 (fx={fx.min().item():g}, fy={fy.min().item():g}); "
            "fx and fy must be positive pixel focal lengths"
        )
    last_row = K.new_tensor([0.0, 0.0, 1.0])
    if not torch.allclose(K[..., 2, :], last_row.expand_as(K[..., 2, :]), atol=1e-9, rtol=0.0):
        raise ValueError(
            f"{name} must have last row (0, 0, 1), got {K[..., 2, :].reshape(-1, 3)[0].tolist()}"
        )
    return K


def intrinsics_matrix(
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """K [3, 3] from pixel focal lengths and principal point (pixels)."""
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    return validate_intrinsics(K)


def scale_intrinsics(K: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """K [..., 3, 3] for an image resized by (scale_x, scale_y).

    With pixel centres at integer coordinates a point maps as u' = s (u + 0.5) - 0.5, so
    fx' = s fx and cx' = s (cx + 0.5) - 0.5 (likewise for y).
    """
    validate_intrinsics(K)
    if not (scale_x > 0 and scale_y > 0 and math.isfinite(scale_x) and math.isfinite(scale_y)):
        raise ValueError(f"image scale factors must be positive and finite, got ({scale_x}, {scale_y})")
    scaled = K.clone()
    scaled[..., 0, 0] = K[..., 0, 0] * scale_x
    scaled[..., 0, 1] = K[..., 0, 1] * scale_x
    scaled[..., 0, 2] = (K[..., 0, 2] + 0.5) * scale_x - 0.5
    scaled[..., 1, 1] = K[..., 1, 1] * scale_y
    scaled[..., 1, 2] = (K[..., 1, 2] + 0.5) * scale_y - 0.5
    return scaled


def crop_intrinsics(K: Tensor, x0: float, y0: float) -> Tensor:
    """K [..., 3, 3] for the crop whose top-left pixel is (x0, y0) of the original image."""
    validate_intrinsics(K)
    cropped = K.clone()
    cropped[..., 0, 2] = K[..., 0, 2] - x0
    cropped[..., 1, 2] = K[..., 1, 2] - y0
    return cropped


def transform_points(x3d: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Map points into the camera frame: x3d [N,3] or [B,N,3], R [B,3,3], t [B,3] -> [B,N,3]."""
    return x3d @ R.transpose(-1, -2) + t.unsqueeze(-2)


def project(x_cam: Tensor, K: Tensor) -> Tensor:
    """Project camera-frame points x_cam [B,N,3] (metres) with K [3,3] or [B,3,3] to pixels [B,N,2].

    Points at or behind the camera plane (z <= 0) have no meaningful image; callers that can get
    them must check depth themselves (see `project_points`).
    """
    K = K if K.ndim == 3 else K.unsqueeze(0)
    uvw = x_cam @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3]


def project_points(x3d: Tensor, R: Tensor, t: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """Project drone-frame points: x3d [N,3] or [B,N,3], R [B,3,3], t [B,3], K [3,3] or [B,3,3].

    Returns pixels [B,N,2] and camera-frame depths z [B,N] (metres).
    """
    x_cam = transform_points(x3d, R, t)
    return project(x_cam, K), x_cam[..., 2]


def keypoints_in_image(uv: Tensor, width: int, height: int) -> Tensor:
    """[...] bool: pixels uv [..., 2] that fall on the image (pixel centres at integers, so the image
    covers [-0.5, width - 0.5) x [-0.5, height - 0.5))."""
    x, y = uv[..., 0], uv[..., 1]
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


def backproject(uv: Tensor, depth: Tensor, K: Tensor) -> Tensor:
    """Camera-frame points [B,N,3] of pixels uv [B,N,2] at depths z [B,N] (metres)."""
    K = K if K.ndim == 3 else K.unsqueeze(0)
    fx, fy = K[:, 0, 0].unsqueeze(-1), K[:, 1, 1].unsqueeze(-1)
    cx, cy, skew = K[:, 0, 2].unsqueeze(-1), K[:, 1, 2].unsqueeze(-1), K[:, 0, 1].unsqueeze(-1)
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    return torch.stack((x * depth, y * depth, depth), dim=-1)


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics and image size of an undistorted pinhole camera (pixels)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise UserError(f"image size must be positive, got {self.width}x{self.height}")
        validate_intrinsics(self.K())

    @classmethod
    def from_vertical_fov(cls, width: int, height: int, vertical_fov_deg: float) -> PinholeCamera:
        """Square pixels, principal point at the image centre (width/2, height/2)."""
        if not 0.0 < vertical_fov_deg < 180.0:
            raise ValueError(f"vertical field of view must be in (0, 180) degrees, got {vertical_fov_deg}")
        focal = (height / 2.0) / math.tan(math.radians(vertical_fov_deg) / 2.0)
        return cls(focal, focal, width / 2.0, height / 2.0, width, height)

    @classmethod
    def uava(cls) -> PinholeCamera:
        """The UAVA camera of the papers: 320x240, fx = fy ~ 252.7 px, principal point (160, 120)."""
        return cls.from_vertical_fov(UAVA_WIDTH, UAVA_HEIGHT, UAVA_VERTICAL_FOV_DEG)

    def K(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Intrinsics matrix [3, 3]."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )

    def resized(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image resized to width x height."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height
        )
