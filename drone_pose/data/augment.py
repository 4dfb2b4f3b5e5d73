"""Training-time augmentation of (image, mask, full mask, keypoints, K, pose) samples.

Geometric augmentation is a rotation about the optical axis plus a scale and shift in the image.
Both are the homography of a physically possible camera: rotating the camera by Rz about its
optical axis maps pixels by K Rz K^-1 and changes the pose to (Rz R, Rz t); zooming and shifting
the image by S changes the intrinsics to S K. So every augmented sample is still an exact pinhole
image of the drone at the returned pose with the returned K, which the PnP losses rely on.

A zoom draw (zoom_probability) instead centres the drone and scales it to about zoom_target_px
(keypoint bounding-box diagonal), as the estimator's second pass does (drone_pose.nets.zoom), so
the network learns the bilinearly upsampled look of far drones that it sees there.

A mirror draw (mirror_probability; drones mirror-symmetric about the body x-z plane only, see
drone_pose.nets.flip) flips the image left-right. The flipped image is the exact pinhole image of the
same drone at the mirrored pose (S R M, S t), with S = diag(-1, 1, 1) in the camera and
M = diag(1, -1, 1) in the body, through K with its principal point mirrored; the left and right
keypoints swap labels (mirror_permutation).

Photometric augmentation (brightness, contrast, saturation, per-channel gain, gamma, blur, noise)
leaves the geometry untouched.

The whole-silhouette mask (full_mask, the mask head's target) is resampled exactly like the image
(bilinear through the same homography, flipped, cropped), so it stays registered to the pixels;
the visible mask keeps nearest-neighbour resampling.

An optional training crop (a fixed-size window placed at random around the drone) shifts the
principal point by the window's corner. A fully convolutional network trained on such crops runs
unchanged on full frames, and a crop of a quarter of the image makes a training step four times
cheaper.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; a zero or (1, 1) range turns an effect off. Angles in degrees."""

    rotation_deg: float = 20.0
    scale: tuple[float, float] = (0.8, 1.25)
    shift_fraction: float = 0.1
    keep_keypoints_inside: bool = True
    max_tries: int = 5
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.6, 1.4)
    channel_gain: float = 0.1
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_sigma: tuple[float, float] = (0.0, 0.03)
    crop: tuple[int, int] | None = None  # (width, height) of the training window, pixels
    crop_margin_px: int = 4
    zoom_probability: float = 0.0  # share of samples zoomed like the estimator's second pass
    zoom_target_px: float = 110.0  # drone size (keypoint box diagonal, px) a zoom draw aims at
    zoom_jitter: tuple[float, float] = (0.75, 1.33)  # factor on the target (first-pass size errors)
    max_zoom: float = 3.0
    zoom_centre_jitter: float = 0.1  # drone centre offset, fraction of the zoomed drone size
    mirror_probability: float = 0.0  # share of samples flipped left-right (needs mirror_permutation)
    mirror_permutation: tuple[int, ...] | None = None  # keypoint j's mirror image is keypoint perm[j]

    def __post_init__(self) -> None:
        for name in ("scale", "contrast", "saturation", "gamma", "blur_sigma", "noise_sigma"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"augment.{name} must be a range 0 <= low <= high, got {(low, high)}")
        if self.scale[0] <= 0 or self.gamma[0] <= 0:
            raise ValueError("augment.scale and augment.gamma must be positive")
        if self.rotation_deg < 0 or self.shift_fraction < 0 or self.max_tries < 1:
            raise ValueError("augment.rotation_deg and shift_fraction must be >= 0, max_tries >= 1")
        if not 0 <= self.zoom_probability <= 1:
            raise ValueError(f"augment.zoom_probability must be in [0, 1], got {self.zoom_probability}")
        if (
            self.zoom_target_px <= 0
            or self.max_zoom < 1
            or not 0 < self.zoom_jitter[0] <= self.zoom_jitter[1]
        ):
            raise ValueError(
                "augment.zoom_target_px must be positive, max_zoom >= 1, zoom_jitter 0 < low <= high"
            )
        if not 0 <= self.mirror_probability <= 1:
            raise ValueError(f"augment.mirror_probability must be in [0, 1], got {self.mirror_probability}")
        if self.mirror_probability > 0 and self.mirror_permutation is None:
            raise ValueError("augment.mirror_probability > 0 needs the drone's mirror_permutation")
        if self.mirror_permutation is not None and sorted(self.mirror_permutation) != list(
            range(len(self.mirror_permutation))
        ):
            raise ValueError(f"augment.mirror_permutation must be a permutation: {self.mirror_permutation}")
        if self.crop is not None and min(self.crop) < 1:
            raise ValueError(f"augment.crop must be a positive (width, height), got {self.crop}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (evaluation)."""
        return cls(
            rotation_deg=0.0,
            scale=(1.0, 1.0),
            shift_fraction=0.0,
            brightness=0.0,
            contrast=(1.0, 1.0),
            saturation=(1.0, 1.0),
            channel_gain=0.0,
            gamma=(1.0, 1.0),
            blur_probability=0.0,
            noise_sigma=(0.0, 0.0),
        )


@dataclass(frozen=True)
class GeometricSample:
    """A sample's geometry. image [H,W,3] float32 RGB in [0,1]; mask [H,W] bool (visible drone);
    keypoints [K,2] pixels; visibility [K] bool; K [3,3]; R [3,3], t [3] metres (camera optical <-
    drone); full_mask [H,W] float32 in [0,1]: the drone's whole silhouette, occluders ignored
    (fractional where resampled), or None when the source has none."""

    image: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray
    visibility: np.ndarray
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    full_mask: np.ndarray | None = None


def warp_matrix(
    K: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float], width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel homography of a roll about the optical axis followed by a zoom and shift.

    Returns (H [3,3] pixel map, Rz [3,3] camera rotation, S [3,3] image similarity): the new image
    is the old one warped by H = S K Rz K^-1, with intrinsics S K and pose (Rz R, Rz t). The zoom is
    about the image centre; shift is in pixels.
    """
    angle = math.radians(angle_deg)
    c, s = math.cos(angle), math.sin(angle)
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    cx, cy = width / 2.0, height / 2.0
    S = np.array(
        [[scale, 0.0, cx - scale * cx + shift[0]], [0.0, scale, cy - scale * cy + shift[1]], [0, 0, 1.0]]
    )
    H = S @ K @ Rz @ np.linalg.inv(K)
    return H, Rz, S


def apply_warp(sample: GeometricSample, H: np.ndarray, Rz: np.ndarray, S: np.ndarray) -> GeometricSample:
    """Warp a sample by the homography of warp_matrix (same output size; outside is black)."""
    height, width = sample.mask.shape
    image = cv2.warpPerspective(
        sample.image,
        H,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    mask = cv2.warpPerspective(
        sample.mask.astype(np.uint8),
        H,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    ).astype(bool)
    full_mask = None
    if sample.full_mask is not None:  # resampled like the image: the mask head's soft target
        full_mask = cv2.warpPerspective(
            sample.full_mask.astype(np.float32),
            H,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    keypoints = _map_points(H, sample.keypoints)
    inside = _inside(keypoints, width, height)
    return GeometricSample(
        image=image,
        mask=mask,
        keypoints=keypoints.astype(np.float32),
        visibility=sample.visibility & inside,
        K=S @ sample.K,
        R=Rz @ sample.R,
        t=Rz @ sample.t,
        full_mask=full_mask,
    )


_CAMERA_MIRROR = np.diag([-1.0, 1.0, 1.0])
_BODY_MIRROR = np.diag([1.0, -1.0, 1.0])


def mirror(sample: GeometricSample, permutation: tuple[int, ...] | list[int]) -> GeometricSample:
    """The sample flipped left-right: the same drone at the mirrored pose (module docstring).

    permutation [K]: keypoint j's mirror image across the body x-z plane is keypoint permutation[j]
    (drone_pose.nets.flip.mirror_permutation). Pixel centres are integers, so u -> W - 1 - u.
    """
    width = sample.mask.shape[1]
    index = np.asarray(permutation)
    keypoints = sample.keypoints[index].copy()
    keypoints[:, 0] = width - 1 - keypoints[:, 0]
    K = sample.K.copy()
    K[0, 1] = -K[0, 1]
    K[0, 2] = width - 1 - K[0, 2]
    return GeometricSample(
        image=np.ascontiguousarray(sample.image[:, ::-1]),
        mask=np.ascontiguousarray(sample.mask[:, ::-1]),
        keypoints=keypoints.astype(np.float32),
        visibility=sample.visibility[index].copy(),
        K=K,
        R=_CAMERA_MIRROR @ sample.R @ _BODY_MIRROR,
        t=_CAMERA_MIRROR @ sample.t,
        full_mask=None if sample.full_mask is None else np.ascontiguousarray(sample.full_mask[:, ::-1]),
    )


def random_geometric(
    sample: GeometricSample, rng: np.random.Generator, config: AugmentConfig
) -> GeometricSample:
    """A random roll/zoom/shift of the sample; with keep_keypoints_inside, a draw that moves an
    in-image keypoint out of the image is redrawn (up to max_tries, then the sample is kept as is)."""
    height, width = sample.mask.shape
    zoom = config.zoom_probability > 0 and rng.random() < config.zoom_probability
    if not zoom and config.rotation_deg == 0 and config.scale == (1.0, 1.0) and config.shift_fraction == 0:
        return sample
    inside_before = _inside(sample.keypoints, width, height)
    for _ in range(config.max_tries):
        angle = rng.uniform(-config.rotation_deg, config.rotation_deg)
        if zoom and inside_before.sum() >= 2:
            scale, shift = _zoom_draw(sample, inside_before, angle, rng, config)
        else:
            scale = math.exp(rng.uniform(math.log(config.scale[0]), math.log(config.scale[1])))
            shift = tuple(rng.uniform(-config.shift_fraction, config.shift_fraction, 2) * (width, height))
        H, Rz, S = warp_matrix(sample.K, angle, scale, shift, width, height)
        moved = _map_points(H, sample.keypoints)
        if not config.keep_keypoints_inside or _inside(moved, width, height)[inside_before].all():
            return apply_warp(sample, H, Rz, S)
    return sample


def _zoom_draw(
    sample: GeometricSample,
    inside: np.ndarray,
    angle_deg: float,
    rng: np.random.Generator,
    config: AugmentConfig,
) -> tuple[float, tuple[float, float]]:
    """Scale and shift of warp_matrix that put the drone (after the roll) near the image centre at
    about zoom_target_px, never shrinking it (scale in [1, max_zoom]), like the second pass."""
    height, width = sample.mask.shape
    roll, _, _ = warp_matrix(sample.K, angle_deg, 1.0, (0.0, 0.0), width, height)
    points = _map_points(roll, sample.keypoints[inside])
    low, high = points.min(axis=0), points.max(axis=0)
    size = max(float(np.linalg.norm(high - low)), 1.0)
    target = config.zoom_target_px * math.exp(rng.uniform(*np.log(config.zoom_jitter)))
    scale = float(np.clip(target / size, 1.0, config.max_zoom))
    centre = np.array([width / 2.0, height / 2.0])
    offset = rng.uniform(-1.0, 1.0, 2) * config.zoom_centre_jitter * size * scale
    shift = offset - scale * ((low + high) / 2.0 - centre)  # drone centre -> image centre + offset
    return scale, (float(shift[0]), float(shift[1]))


def random_photometric(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Photometric jitter of an [H,W,3] float32 RGB image in [0,1]; returns a new image in [0,1]."""
    out = image * rng.uniform(*config.contrast) + rng.uniform(-config.brightness, config.brightness)
    grey = out.mean(axis=2, keepdims=True)
    out = grey + (out - grey) * rng.uniform(*config.saturation)
    out = out * (1.0 + rng.uniform(-config.channel_gain, config.channel_gain, 3)).astype(np.float32)
    out = np.clip(out, 0.0, 1.0) ** rng.uniform(*config.gamma)
    if rng.random() < config.blur_probability:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*config.blur_sigma))
    sigma = rng.uniform(*config.noise_sigma)
    if sigma > 0:
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * sigma
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def random_crop(
    sample: GeometricSample, rng: np.random.Generator, size: tuple[int, int], margin_px: int = 4
) -> GeometricSample:
    """A (width, height) window of the sample placed at random so that it contains the drone (the
    union of its mask and in-image keypoints, plus margin_px) when it fits, else centred on it.

    The window's corner (x0, y0) is an integer pixel, so the crop is exact: keypoints move by
    -(x0, y0), the principal point too, the pose is unchanged, and keypoints that fall outside the
    window lose their visibility. A window larger than the image is padded with black.
    """
    height, width = sample.mask.shape
    crop_w, crop_h = size
    inside = _inside(sample.keypoints, width, height) & sample.visibility
    ys, xs = np.nonzero(sample.mask)
    xs = np.concatenate([xs, sample.keypoints[inside, 0]])
    ys = np.concatenate([ys, sample.keypoints[inside, 1]])
    corner = []
    for values, extent, window in ((xs, width, crop_w), (ys, height, crop_h)):
        if len(values) == 0:
            corner.append(int(rng.integers(0, max(extent - window, 0) + 1)))
            continue
        low = int(np.floor(values.min())) - margin_px
        high = int(np.ceil(values.max())) + margin_px
        first, last = high - window + 1, low  # corners that keep [low, high] inside the window
        first, last = max(first, 0), min(last, extent - window)
        if first <= last:
            corner.append(int(rng.integers(first, last + 1)))
        else:  # the drone does not fit (or the window exceeds the image): centre it
            corner.append(round((low + high - window) / 2))
    x0, y0 = corner
    image = _window(sample.image, x0, y0, crop_w, crop_h)
    mask = _window(sample.mask, x0, y0, crop_w, crop_h)
    full_mask = None if sample.full_mask is None else _window(sample.full_mask, x0, y0, crop_w, crop_h)
    keypoints = (sample.keypoints - np.array([x0, y0], dtype=sample.keypoints.dtype)).astype(np.float32)
    K = sample.K.copy()
    K[0, 2] -= x0
    K[1, 2] -= y0
    visibility = sample.visibility & _inside(keypoints, crop_w, crop_h)
    return GeometricSample(image, mask, keypoints, visibility, K, sample.R, sample.t, full_mask)


def augment(sample: GeometricSample, rng: np.random.Generator, config: AugmentConfig) -> GeometricSample:
    """The optional mirror, geometric augmentation, the training crop, then photometric augmentation."""
    if config.mirror_probability > 0 and rng.random() < config.mirror_probability:
        sample = mirror(sample, config.mirror_permutation)
    warped = random_geometric(sample, rng, config)
    if config.crop is not None:
        warped = random_crop(warped, rng, config.crop, config.crop_margin_px)
    return dataclasses.replace(warped, image=random_photometric(warped.image, rng, config))


def _window(array: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """array[y0:y0+height, x0:x0+width] with zeros wherever the window leaves the array."""
    out = np.zeros((height, width, *array.shape[2:]), dtype=array.dtype)
    src_x0, src_y0 = max(x0, 0), max(y0, 0)
    src_x1, src_y1 = min(x0 + width, array.shape[1]), min(y0 + height, array.shape[0])
    if src_x1 > src_x0 and src_y1 > src_y0:
        out[src_y0 - y0 : src_y1 - y0, src_x0 - x0 : src_x1 - x0] = array[src_y0:src_y1, src_x0:src_x1]
    return out


def _map_points(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ H.T
    return homogeneous[:, :2] / homogeneous[:, 2:]


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return (
        (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)
    )
