"""Lens distortion of the ROS camera models: pixels of a distorted image <-> pixels of the ideal
pinhole camera with the same K.

Models are sensor_msgs/CameraInfo's `distortion_model` names, with the coefficients `d` in
OpenCV's order:

- plumb_bob: k1, k2, p1, p2, k3 (radial-tangential, OpenCV's default model);
- rational_polynomial: k1, k2, p1, p2, k3, k4, k5, k6;
- equidistant: k1, k2, k3, k4 (OpenCV's fisheye model).

Fewer coefficients than the model has are padded with zeros (a 4-number plumb_bob is k3 = 0); more
are accepted only when the extra ones are zero. An empty model name is the pinhole camera and takes
only zero coefficients. OpenCV does the work (cv2.undistortPoints with explicit termination
criteria, cv2.projectPoints, cv2.fisheye.*) on normalised image coordinates, so a K with skew is
honoured exactly. Pixel centres are at integer coordinates, as in drone_pose.geometry.camera.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

# model name -> the names of its coefficients, in CameraInfo/OpenCV order
MODEL_COEFFICIENTS: dict[str, tuple[str, ...]] = {
    "plumb_bob": ("k1", "k2", "p1", "p2", "k3"),
    "rational_polynomial": ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    "equidistant": ("k1", "k2", "k3", "k4"),
}
DISTORTION_MODELS = tuple(MODEL_COEFFICIENTS)
# Undistortion iterates until the distorted point it implies is this close to the observed one
# (pixels), and flags points it cannot bring within UNDISTORT_CHECK_PX as not invertible.
UNDISTORT_TOLERANCE_PX = 1e-4
UNDISTORT_CHECK_PX = 1e-2
UNDISTORT_MAX_ITERATIONS = 100


@dataclass(frozen=True)
class Distortion:
    """A camera model: `model` (one of DISTORTION_MODELS, or "" for none) and its coefficients.

    Raises ValueError on an unknown model, non-finite coefficients, or more non-zero
    coefficients than the model has. Coefficients are stored padded to the model's length.
    """

    model: str
    coefficients: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        values = np.asarray(self.coefficients, dtype=np.float64).reshape(-1)
        if not np.isfinite(values).all():
            raise ValueError(f"distortion coefficients must be finite, got {values.tolist()}")
        if self.model == "":
            if values.any():
                raise ValueError(
                    "distortion coefficients given without a distortion model; "
                    f"set one of {', '.join(DISTORTION_MODELS)}"
                )
            object.__setattr__(self, "coefficients", ())
            return
        names = MODEL_COEFFICIENTS.get(self.model)
        if names is None:
            raise ValueError(
                f"unsupported distortion model {self.model!r}; supported: {', '.join(DISTORTION_MODELS)}"
            )
        if values[len(names) :].any():
            raise ValueError(
                f"{self.model} takes at most {len(names)} coefficients ({', '.join(names)}), "
                f"got {values.size} with non-zero ones beyond them"
            )
        padded = np.zeros(len(names))
        padded[: min(values.size, len(names))] = values[: len(names)]
        object.__setattr__(self, "coefficients", tuple(float(v) for v in padded))

    @property
    def is_identity(self) -> bool:
        """True when the model leaves every point where it is (no model, or all coefficients 0)."""
        return not any(self.coefficients)

    @property
    def fisheye(self) -> bool:
        """True for the equidistant (OpenCV fisheye) model."""
        return self.model == "equidistant"


def distortion_or_none(model: str, coefficients: Sequence[float] | np.ndarray) -> Distortion | None:
    """A validated Distortion, or None when it is the identity (so callers take the pinhole path).
    ValueError as Distortion."""
    distortion = Distortion(model, tuple(np.asarray(coefficients, dtype=np.float64).reshape(-1)))
    return None if distortion.is_identity else distortion


def per_image(
    distortion: Distortion | Sequence[Distortion | None] | None, batch: int
) -> list[Distortion | None] | None:
    """One Distortion (or None) per image of a batch of `batch`, or None when no image has one.

    `distortion` is None, one Distortion shared by the batch, or a sequence of `batch` of them.
    """
    if distortion is None:
        return None
    items = [distortion] * batch if isinstance(distortion, Distortion) else list(distortion)
    if len(items) != batch:
        raise ValueError(f"got {batch} images but {len(items)} distortions")
    for item in items:
        if item is not None and not isinstance(item, Distortion):
            raise TypeError(f"distortion must be a Distortion or None, got {type(item).__name__}")
    models = [None if item is None or item.is_identity else item for item in items]
    return None if all(item is None for item in models) else models


def undistort_pixels(
    uv: Tensor, K: Tensor, distortion: Distortion | Sequence[Distortion | None] | None
) -> tuple[Tensor, Tensor]:
    """Ideal-pinhole pixels [B,N,2] of distorted-image pixels uv [B,N,2], and which are valid [B,N].

    K [3,3] or [B,3,3]; distortion: one for the batch, one per image, or None. A point is invalid
    when the model cannot be inverted there (the iteration diverges, e.g. far outside a strongly
    distorted image's field of view); its returned coordinates are then meaningless (may be
    non-finite). Without distortion (or all coefficients 0) uv itself is returned.
    """
    models = per_image(distortion, uv.shape[0])
    valid = torch.ones(uv.shape[:2], dtype=torch.bool)
    if models is None:
        return uv, valid
    K = _batched(K, uv.shape[0])
    result = uv.double().cpu().clone()
    for model, images in _groups(models).items():
        points = _normalised(result[images], K[images])
        focal = float(K[images][:, :2].diagonal(dim1=-2, dim2=-1).max())
        undistorted = _undistort_normalised(
            points.reshape(-1, 2).numpy(), model, UNDISTORT_TOLERANCE_PX / focal
        )
        round_trip = _distort_normalised(undistorted, model)
        error_px = np.abs(round_trip - points.reshape(-1, 2).numpy()).max(-1) * focal
        ok = np.isfinite(undistorted).all(-1) & (error_px <= UNDISTORT_CHECK_PX)
        result[images] = _pixels(torch.from_numpy(undistorted).reshape(points.shape), K[images])
        valid[images] = torch.from_numpy(ok).reshape(points.shape[:2])
    return result.to(device=uv.device, dtype=uv.dtype), valid


def distort_pixels(
    uv: Tensor, K: Tensor, distortion: Distortion | Sequence[Distortion | None] | None
) -> Tensor:
    """Distorted-image pixels [B,N,2] of ideal-pinhole pixels uv [B,N,2] (K [3,3] or [B,3,3]): where
    the camera shows a point the pinhole camera K shows at uv. Without distortion, uv itself."""
    models = per_image(distortion, uv.shape[0])
    if models is None:
        return uv
    K = _batched(K, uv.shape[0])
    result = uv.double().cpu().clone()
    for model, images in _groups(models).items():
        points = _normalised(result[images], K[images])
        distorted = _distort_normalised(points.reshape(-1, 2).numpy(), model)
        result[images] = _pixels(torch.from_numpy(distorted).reshape(points.shape), K[images])
    return result.to(device=uv.device, dtype=uv.dtype)


def _undistort_normalised(xy: np.ndarray, model: Distortion, epsilon: float) -> np.ndarray:
    """Undistorted normalised coordinates [M,2] of distorted ones [M,2] (float64)."""
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, UNDISTORT_MAX_ITERATIONS, epsilon)
    identity = np.eye(3)
    coefficients = np.asarray(model.coefficients)
    points = np.ascontiguousarray(xy, dtype=np.float64).reshape(-1, 1, 2)
    if model.fisheye:
        out = cv2.fisheye.undistortPoints(points, identity, coefficients, criteria=criteria)
    else:
        out = cv2.undistortPoints(points, identity, coefficients, criteria=criteria)
    return out.reshape(-1, 2)


def _distort_normalised(xy: np.ndarray, model: Distortion) -> np.ndarray:
    """Distorted normalised coordinates [M,2] of undistorted ones [M,2] (float64)."""
    coefficients = np.asarray(model.coefficients)
    points = np.ascontiguousarray(xy, dtype=np.float64).reshape(-1, 1, 2)
    if model.fisheye:
        return cv2.fisheye.distortPoints(points, np.eye(3), coefficients).reshape(-1, 2)
    rays = np.concatenate([points.reshape(-1, 2), np.ones((len(points), 1))], axis=1)
    projected, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), np.eye(3), coefficients)
    return projected.reshape(-1, 2)


def _groups(models: list[Distortion | None]) -> dict[Distortion, list[int]]:
    """Image indices by camera model (None: no distortion, left out)."""
    groups: dict[Distortion, list[int]] = {}
    for index, model in enumerate(models):
        if model is not None:
            groups.setdefault(model, []).append(index)
    return groups


def _batched(K: Tensor, batch: int) -> Tensor:
    K = torch.as_tensor(K, dtype=torch.float64).cpu()
    return K.expand(batch, 3, 3) if K.ndim == 2 else K


def _normalised(uv: Tensor, K: Tensor) -> Tensor:
    """Normalised image coordinates [B,N,2] (x/z, y/z) of pixels uv [B,N,2] under K [B,3,3]."""
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy, skew = K[:, 0, 2, None], K[:, 1, 2, None], K[:, 0, 1, None]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    return torch.stack((x, y), dim=-1)


def _pixels(xy: Tensor, K: Tensor) -> Tensor:
    """Pixels [B,N,2] of normalised coordinates xy [B,N,2] under K [B,3,3]."""
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy, skew = K[:, 0, 2, None], K[:, 1, 2, None], K[:, 0, 1, None]
    return torch.stack((fx * xy[..., 0] + skew * xy[..., 1] + cx, fy * xy[..., 1] + cy), dim=-1)
