"""Synthetic UAVA-like images: a shaded drone mesh over a procedural background, with ground truth.

`render_scene(drone, R, t, K, width, height, seed)` draws the drone at pose camera<-drone with
z-buffered, Lambert-shaded triangles (per-part colours, a random light), anti-aliased by averaging
4x4 samples per pixel (a camera pixel integrates light over its area), over a background (sky/ground
gradient, noise texture, random shapes, or a photo from a user folder), then applies partial
occlusion, motion blur, exposure and white-balance jitter and sensor noise. Everything random comes
from `seed`: the same call gives the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from drone_pose.data.rasterize import NEAR_PLANE_M, project_vertices, rasterize
from drone_pose.drones import DroneModel
from drone_pose.geometry.camera import validate_intrinsics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Base RGB colours by part-name prefix (0..1), first match wins; jittered per image. The front arms
# and motors carry a red marking, as real quadrotors' front LEDs and arm markings do: without any
# front/rear cue a 180-degree yaw turn of the (front/rear-symmetric) keypoints is invisible.
PART_COLOURS = {
    "arm_front": (0.70, 0.20, 0.14),
    "motor_front": (0.55, 0.10, 0.07),
    "body": (0.35, 0.36, 0.38),
    "battery": (0.25, 0.26, 0.28),
    "gimbal": (0.12, 0.12, 0.13),
    "arm": (0.30, 0.31, 0.33),
    "motor": (0.10, 0.10, 0.11),
    "propeller": (0.55, 0.56, 0.58),
    "guard": (0.80, 0.80, 0.82),
}
DEFAULT_PART_COLOUR = (0.4, 0.4, 0.4)


@dataclass(frozen=True)
class SceneConfig:
    """Probabilities and strengths of the image effects (0 disables an effect).

    background_folder: user images used as backgrounds with probability background_photo_p.
    occlusion_p: chance of an occluding shape over part of the drone; distractors: max random
    shapes in the background; motion_blur_p / max_blur_px; noise_std: sensor noise (0..255 units);
    exposure: max relative exposure change; white_balance: max relative per-channel gain change.
    supersampling: the drone is rasterised at this many times the resolution per axis and averaged
    down (a box filter, like a pixel's area). 2 quantises edge coverage to quarters, jagged edges
    that a camera does not make (what they cost a small drone's accuracy: docs/experiments.md).
    """

    background_folder: str | None = None
    background_photo_p: float = 0.5
    distractors: int = 6
    occlusion_p: float = 0.15
    motion_blur_p: float = 0.2
    max_blur_px: float = 5.0
    noise_std: float = 3.0
    exposure: float = 0.25
    white_balance: float = 0.08
    supersampling: int = 4

    def __post_init__(self) -> None:
        value = self.supersampling
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"scene.supersampling must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Scene:
    """A rendered image and its ground truth.

    image [H,W,3] uint8 RGB; mask [H,W] bool: drone pixels left visible (after occluders);
    full_mask [H,W] bool: the drone's whole silhouette in the image, occluders ignored;
    keypoints [K,2] pixels (centres at integers; may lie outside the image); visibility [K] bool:
    inside the image, not hidden by the drone itself, nor by an occluder; bbox [4] (x0, y0, x1, y1)
    pixels of full_mask (zeros when the drone is not in view); R [3,3], t [3]: the pose.
    """

    image: np.ndarray
    mask: np.ndarray
    full_mask: np.ndarray
    keypoints: np.ndarray
    visibility: np.ndarray
    bbox: np.ndarray
    R: np.ndarray
    t: np.ndarray


def check_camera(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """K as a float64 [3,3] array; ValueError for an impossible camera or image size."""
    if (
        not (isinstance(width, int | np.integer) and isinstance(height, int | np.integer))
        or min(width, height) < 8
    ):
        raise ValueError(f"image size must be integers of at least 8 pixels, got {width}x{height}")
    K = np.asarray(K, dtype=np.float64)
    validate_intrinsics(torch.from_numpy(K))
    return K


def render_scene(
    drone: DroneModel,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    seed: int | np.random.SeedSequence = 0,
    config: SceneConfig | None = None,
    background: np.ndarray | None = None,
    appearance: int | np.random.SeedSequence | None = None,
) -> Scene:
    """Render the drone at pose (R [3,3], t [3] metres, camera optical <- drone body) seen through K.

    For videos, `background` ([H,W,3] float32 RGB in 0..1, e.g. from render_background) fixes the
    background and `appearance` seeds the drone's colours and light, so they stay the same from
    frame to frame; by default both come from `seed`.
    """
    config = config or SceneConfig()
    K = check_camera(K, width, height)
    R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    if R.shape != (3, 3) or t.shape != (3,) or not (np.isfinite(R).all() and np.isfinite(t).all()):
        raise ValueError("R must be a finite [3, 3] rotation and t a finite [3] translation")
    rng = np.random.default_rng(seed)

    if background is None:
        background = render_background(rng, width, height, config)
    elif background.shape != (height, width, 3):
        raise ValueError(f"background must be [{height}, {width}, 3], got {list(background.shape)}")
    colour_rng = rng if appearance is None else np.random.default_rng(appearance)
    colour, coverage, depth_fine, (x0, y0, x1, y1) = _drone_layer(
        drone, R, t, K, width, height, colour_rng, config.supersampling
    )
    image = np.array(background, dtype=np.float32)  # a copy: the caller's background stays intact
    alpha = coverage[y0:y1, x0:x1, None]
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - alpha) + colour[y0:y1, x0:x1] * alpha
    full_mask = coverage >= 0.5

    occluder = np.zeros((height, width), dtype=bool)
    if full_mask.any() and rng.random() < config.occlusion_p:
        occluder = _occluder_mask(rng, full_mask)
        shade = rng.uniform(0.05, 0.95, 3)
        image = np.where(occluder[..., None], shade * rng.uniform(0.8, 1.2, (height, width, 1)), image)

    image = _camera_effects(image, rng, config)
    keypoints, keypoint_depth = _project(drone.keypoints, R, t, K)
    visibility = _visibility(keypoints, keypoint_depth, depth_fine, occluder, drone, width, height)
    return Scene(
        image=image,
        mask=full_mask & ~occluder,
        full_mask=full_mask,
        keypoints=keypoints,
        visibility=visibility,
        bbox=_bbox(full_mask),
        R=R,
        t=t,
    )


def _project(
    points: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N,2] and depths [N] of body-frame points [N,3]."""
    p = points @ R.T + t
    uvw = p @ K.T
    return uvw[:, :2] / uvw[:, 2:3], p[:, 2]


def fine_intrinsics(K: np.ndarray, factor: int) -> np.ndarray:
    """K of an image `factor` times larger (pixel centres at integers in both)."""
    scaled = K.copy()
    scaled[:2] *= factor
    scaled[:2, 2] += 0.5 * (factor - 1)
    return scaled


@dataclass(frozen=True)
class FineDepth:
    """The supersampled depth buffer of the drone's image region: depth [h,w] metres (inf where no
    triangle) whose pixel (0, 0) is fine pixel (x0, y0) of the whole image supersampled `factor` times."""

    depth: np.ndarray
    x0: int
    y0: int
    factor: int

    def at(self, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Depth at fine pixels (columns, rows) [N] of the whole image; inf outside the region."""
        c, r = columns - self.x0, rows - self.y0
        inside = (c >= 0) & (r >= 0) & (c < self.depth.shape[1]) & (r < self.depth.shape[0])
        out = np.full(len(columns), np.inf)
        out[inside] = self.depth[r[inside], c[inside]]
        return out


def _drone_box(vertices_cam: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Image pixels (x0, y0, x1, y1), end exclusive, that can hold the drone; the whole image when a
    vertex is too close to project; empty (x1 <= x0) when the drone is out of view."""
    if vertices_cam[:, 2].min() <= NEAR_PLANE_M:
        return 0, 0, width, height
    uv, _ = project_vertices(vertices_cam, K)
    (u0, v0), (u1, v1) = uv.min(0), uv.max(0)
    x0, y0 = max(int(np.floor(u0)) - 1, 0), max(int(np.floor(v0)) - 1, 0)
    x1, y1 = min(int(np.ceil(u1)) + 2, width), min(int(np.ceil(v1)) + 2, height)
    return x0, y0, x1, y1


def _drone_layer(
    drone: DroneModel,
    R: np.ndarray,
    t: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    rng: np.random.Generator,
    supersampling: int,
) -> tuple[np.ndarray, np.ndarray, FineDepth, tuple[int, int, int, int]]:
    """Drone colour [H,W,3] (0..1), coverage [H,W] (0..1), the fine depth buffer of its region and
    the region (x0, y0, x1, y1), end exclusive, outside which coverage is zero.

    Only the drone's bounding box is rasterised (at `supersampling` times the resolution), so the
    cost follows the drone's size in the image, not the image size.
    """
    s = supersampling
    vertices = drone.vertices @ R.T + t
    triangles = vertices[drone.faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    face_colours = _face_colours(drone, normals, rng)
    colour = np.zeros((height, width, 3), dtype=np.float32)
    coverage = np.zeros((height, width), dtype=np.float32)
    x0, y0, x1, y1 = _drone_box(vertices, K, width, height)
    if x1 <= x0 or y1 <= y0:
        return colour, coverage, FineDepth(np.full((0, 0), np.inf), 0, 0, s), (0, 0, 0, 0)
    fine_K = fine_intrinsics(K, s)
    fine_K[0, 2] -= s * x0
    fine_K[1, 2] -= s * y0
    # with closed parts, faces turned away from the camera are always hidden: skip them
    drawn = None
    if drone.closed_outward:
        drawn = np.nonzero(np.einsum("ij,ij->i", normals, triangles[:, 0]) < 0)[0]
    faces = drone.faces if drawn is None else drone.faces[drawn]
    raster = rasterize(vertices, faces, fine_K, (x1 - x0) * s, (y1 - y0) * s)
    covered = raster.face >= 0
    face_index = raster.face[covered] if drawn is None else drawn[raster.face[covered]]
    fine = np.zeros((*covered.shape, 3), dtype=np.float32)
    fine[covered] = face_colours[face_index]
    box_coverage = cv2.resize(covered.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    premultiplied = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    coverage[y0:y1, x0:x1] = box_coverage
    colour[y0:y1, x0:x1] = premultiplied / np.maximum(box_coverage, 1e-6)[..., None]
    return colour, coverage, FineDepth(raster.depth, s * x0, s * y0, s), (x0, y0, x1, y1)


def _face_colours(drone: DroneModel, normals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lambert-shaded colour [F,3] of each face (normals [F,3] in the camera frame, any length):
    part colour x (ambient + diffuse |n . l|)."""
    base = np.array(
        [
            next((c for prefix, c in PART_COLOURS.items() if name.startswith(prefix)), DEFAULT_PART_COLOUR)
            for name in drone.part_names
        ]
    )
    base = np.clip(base * rng.uniform(0.6, 1.5) + rng.normal(0.0, 0.04, base.shape), 0.0, 1.0)
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    light = rng.normal(size=3) + np.array([0.0, -1.0, -0.5])  # mostly from above the camera
    light /= np.linalg.norm(light)
    ambient, diffuse = rng.uniform(0.25, 0.45), rng.uniform(0.5, 0.9)
    shade = ambient + diffuse * np.abs(normals @ light)
    return (base[drone.face_parts] * shade[:, None]).astype(np.float32)


def render_background(rng: np.random.Generator, width: int, height: int, config: SceneConfig) -> np.ndarray:
    """Background [H,W,3] float32 in 0..1: a user photo, or sky/ground gradient + texture + shapes."""
    photos = _photo_paths(config.background_folder)
    if photos and rng.random() < config.background_photo_p:
        photo = cv2.imread(str(photos[rng.integers(len(photos))]), cv2.IMREAD_COLOR)
        if photo is not None:
            return _random_crop(rng, cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), width, height)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky_top, sky_bottom = rng.uniform([0.3, 0.45, 0.6], [0.7, 0.8, 1.0]), rng.uniform(0.6, 1.0, 3)
    image = sky_top + (sky_bottom - sky_top) * rows
    horizon = rng.uniform(-0.2, 1.2)  # as a fraction of the height; outside: all sky or all ground
    ground = rng.uniform([0.15, 0.15, 0.1], [0.55, 0.55, 0.4])
    ground_rows = rows[:, :, 0] >= horizon
    image = np.where(ground_rows[..., None], ground * (0.8 + 0.4 * rows), image)
    image = np.broadcast_to(image, (height, width, 3)).astype(np.float32)
    for cells in (4, 16, 64):  # multi-scale value noise
        noise = rng.normal(0.0, 1.0, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        image = image + rng.uniform(0.0, 0.06) * cv2.resize(
            noise, (width, height), interpolation=cv2.INTER_CUBIC
        )
    image = np.ascontiguousarray(np.clip(image, 0.0, 1.0))
    for _ in range(rng.integers(0, config.distractors + 1)):
        _draw_shape(image, rng)
    return image


def _photo_paths(folder: str | None) -> list[Path]:
    if not folder:
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _random_crop(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    scale = max(width / photo.shape[1], height / photo.shape[0]) * rng.uniform(1.0, 2.0)
    resized = cv2.resize(
        photo, (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale)))
    )
    y = rng.integers(0, resized.shape[0] - height + 1)
    x = rng.integers(0, resized.shape[1] - width + 1)
    return resized[y : y + height, x : x + width].astype(np.float32) / 255.0


def _draw_shape(image: np.ndarray, rng: np.random.Generator) -> None:
    """A random filled circle, rectangle, polygon or thick line (a distractor), in place."""
    height, width = image.shape[:2]
    colour = tuple(float(c) for c in rng.uniform(0.0, 1.0, 3))
    centre = rng.uniform([0, 0], [width, height]).astype(np.int32)
    size = int(rng.uniform(0.03, 0.25) * width)
    kind = rng.integers(4)
    if kind == 0:
        cv2.circle(image, tuple(int(c) for c in centre), size, colour, -1, cv2.LINE_AA)
    elif kind == 1:
        corner = centre + rng.integers(-size, size + 1, 2)
        cv2.rectangle(image, tuple(int(c) for c in centre), tuple(int(c) for c in corner), colour, -1)
    elif kind == 2:
        points = (centre + rng.normal(0, size, (rng.integers(3, 7), 2))).astype(np.int32)
        cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
    else:
        end = centre + rng.integers(-2 * size, 2 * size + 1, 2)
        thickness = int(rng.integers(1, 6))
        cv2.line(
            image, tuple(int(c) for c in centre), tuple(int(c) for c in end), colour, thickness, cv2.LINE_AA
        )


def _occluder_mask(rng: np.random.Generator, drone_mask: np.ndarray) -> np.ndarray:
    """A random polygon covering part (about 10-50 % of the box) of the drone's bounding box."""
    x0, y0, x1, y1 = _bbox(drone_mask)
    box = np.array([x1 - x0 + 1, y1 - y0 + 1])
    centre = np.array([x0, y0]) + rng.uniform(0.0, 1.0, 2) * box
    radius = rng.uniform(0.2, 0.5) * box.max()
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, rng.integers(3, 8)))
    radii = radius * rng.uniform(0.6, 1.0, len(angles))
    points = centre + np.stack((np.cos(angles), np.sin(angles)), 1) * radii[:, None]
    mask = np.zeros(drone_mask.shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _camera_effects(image: np.ndarray, rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
    """Motion blur, exposure and white balance, sensor noise; float 0..1 -> uint8 RGB."""
    if config.max_blur_px > 0 and rng.random() < config.motion_blur_p:
        length = rng.uniform(1.5, config.max_blur_px)
        angle = rng.uniform(0.0, np.pi)
        size = int(np.ceil(length)) | 1
        kernel = np.zeros((size, size), np.float32)
        c = (size - 1) / 2
        direction = np.array([np.cos(angle), np.sin(angle)]) * (length - 1) / 2
        start, end = np.round(c - direction).astype(int), np.round(c + direction).astype(int)
        cv2.line(kernel, tuple(int(v) for v in start), tuple(int(v) for v in end), 1.0, 1)
        image = cv2.filter2D(image, -1, kernel / kernel.sum())
    gains = rng.uniform(1 - config.exposure, 1 + config.exposure) * rng.uniform(
        1 - config.white_balance, 1 + config.white_balance, 3
    )
    image = cv2.transform(image, np.diag(gains * 255.0))
    if config.noise_std > 0:
        noise = np.empty_like(image)
        cv2.setRNGSeed(int(rng.integers(2**31)))  # OpenCV's generator, seeded from ours: deterministic
        cv2.randn(noise, 0.0, rng.uniform(0.3, 1.0) * config.noise_std)
        image = cv2.add(image, noise)
    _, image = cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO)
    return cv2.convertScaleAbs(image)  # rounds and saturates at 255


def _visibility(
    keypoints: np.ndarray,
    depth: np.ndarray,
    depth_fine: FineDepth,
    occluder: np.ndarray,
    drone: DroneModel,
    width: int,
    height: int,
) -> np.ndarray:
    """[K] bool: in the image, in front of the camera, not behind the drone's own surface, not occluded.

    A keypoint is self-occluded when the rendered surface at its pixel is nearer than it by more
    than half the drone's smallest extent (keypoints inside the body, like the centroid, sit that
    far below the surface that shows them).
    """
    inside = (
        (keypoints[:, 0] >= -0.5)
        & (keypoints[:, 0] < width - 0.5)
        & (keypoints[:, 1] >= -0.5)
        & (keypoints[:, 1] < height - 0.5)
        & (depth > 0)
    )
    extents = drone.vertices.max(0) - drone.vertices.min(0)
    tolerance = 0.5 * float(np.min(drone.dimensions if drone.dimensions else extents))
    s = depth_fine.factor
    columns = np.clip(np.round((keypoints[:, 0] + 0.5) * s - 0.5), 0, width * s - 1).astype(int)
    rows = np.clip(np.round((keypoints[:, 1] + 0.5) * s - 0.5), 0, height * s - 1).astype(int)
    surface = depth_fine.at(columns, rows)
    unoccluded = ~occluder[rows // s, columns // s]
    return inside & (depth <= surface + tolerance) & unoccluded


def _bbox(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) [4] float32 of a mask's pixels (inclusive), zeros for an empty mask."""
    rows, columns = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        return np.zeros(4, np.float32)
    return np.array([columns[0], rows[0], columns[-1], rows[-1]], np.float32)
