"""Synthetic renderer: ground truth consistent with the image, visibility, determinism, bad input."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from drone_pose.data.poses import PoseSamplingConfig, sample_poses
from drone_pose.data.synth import SceneConfig, render_scene
from drone_pose.drones import DroneModelError, load_drone
from drone_pose.geometry.camera import PinholeCamera

K = PinholeCamera.uava().K().double().numpy()
W, H = 320, 240
CLEAN = SceneConfig(occlusion_p=0.0, motion_blur_p=0.0, noise_std=0.0, distractors=0)


def looking_at_drone(elevation_deg: float, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """A level drone straight ahead of a camera that looks up (or down) at it by elevation_deg."""
    a = np.radians(elevation_deg)
    level = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # optical <- world
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), np.sin(a)], [0.0, -np.sin(a), np.cos(a)]])
    return pitch @ level, np.array([0.0, 0.0, distance])


def reference_silhouette(drone, R, t, factor: int = 8) -> np.ndarray:
    """Independent silhouette: every projected triangle filled by OpenCV at 8x, area-downsampled
    (finer than the renderer's 4x, so OpenCV's boundary-inclusive fill does not fatten it)."""
    p = drone.vertices @ R.T + t
    uv = (p @ K.T)[:, :2] / p[:, 2:3]
    fine = np.zeros((H * factor, W * factor), np.uint8)
    shift = 4  # sub-pixel vertex positions for fillPoly
    corners = np.round(((uv + 0.5) * factor - 0.5) * (1 << shift)).astype(np.int32)
    for triangle in corners[drone.faces]:  # one by one: fillPoly's even-odd rule would cancel overlaps
        cv2.fillConvexPoly(fine, triangle, 1, cv2.LINE_8, shift)
    return cv2.resize(fine.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA) >= 0.5


@pytest.mark.parametrize("name", ["m2ed", "tello"])
def test_mask_matches_an_independent_rasterisation(name):
    """IoU > 0.98 over the set; per image at most 3 pixels or 5 % differ (edge pixels of tiny drones)."""
    drone = load_drone(name)
    poses = sample_poses(drone, K, W, H, 8, np.random.default_rng(4))
    intersection = union = 0
    for i in range(8):
        scene = render_scene(drone, poses.R[i], poses.t[i], K, W, H, seed=i, config=CLEAN)
        reference = reference_silhouette(drone, poses.R[i], poses.t[i])
        both, either = (scene.full_mask & reference).sum(), (scene.full_mask | reference).sum()
        assert either - both <= max(3, 0.05 * either), (name, i, both, either)
        intersection, union = intersection + both, union + either
        assert scene.image.shape == (H, W, 3)
        assert scene.image.dtype == np.uint8
        x0, y0, x1, y1 = scene.bbox
        rows, cols = np.nonzero(scene.full_mask)
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max(), rows.max())
    assert intersection / union > 0.98


def test_keypoints_land_on_the_rendered_drone():
    drone = load_drone("m2ed")
    poses = sample_poses(drone, K, W, H, 10, np.random.default_rng(5))
    for i in range(10):
        scene = render_scene(drone, poses.R[i], poses.t[i], K, W, H, seed=i, config=CLEAN)
        near_drone = cv2.dilate(scene.full_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        pixels = np.round(scene.keypoints).astype(int)
        assert near_drone[pixels[:, 1], pixels[:, 0]].all()


def test_visibility_from_above_and_below():
    """Seen from above, motor tops show and motor bases hide under the motors; from below, the reverse."""
    drone = load_drone("m2ed")
    tops, bases = slice(1, 5), slice(5, 9)
    R, t = looking_at_drone(-80.0, 1.0)  # camera looks down on the drone
    above = render_scene(drone, R, t, K, W, H, seed=0, config=CLEAN).visibility
    assert above[tops].all()
    assert not above[bases].any()
    R, t = looking_at_drone(80.0, 1.0)
    below = render_scene(drone, R, t, K, W, H, seed=0, config=CLEAN).visibility
    assert below[bases].all()
    assert not below[tops].any()


def test_visibility_outside_the_image_and_under_an_occluder():
    drone = load_drone("m2ed")
    R, t = looking_at_drone(-80.0, 1.0)
    t_edge = t + np.array([0.62, 0.0, 0.0])  # drone half out of the right edge
    scene = render_scene(drone, R, t_edge, K, W, H, seed=0, config=CLEAN)
    outside = scene.keypoints[:, 0] >= W - 0.5
    assert outside.any()
    assert not scene.visibility[outside].any()
    occluded = render_scene(drone, R, t, K, W, H, seed=0, config=SceneConfig(occlusion_p=1.0))
    assert occluded.mask.sum() < occluded.full_mask.sum()
    assert not (occluded.mask & ~occluded.full_mask).any()


def test_same_seed_same_image_and_another_seed_differs():
    drone = load_drone("tello")
    poses = sample_poses(drone, K, W, H, 1, np.random.default_rng(0))
    first = render_scene(drone, poses.R[0], poses.t[0], K, W, H, seed=11)
    again = render_scene(drone, poses.R[0], poses.t[0], K, W, H, seed=11)
    other = render_scene(drone, poses.R[0], poses.t[0], K, W, H, seed=12)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.visibility, again.visibility)
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize(("name", "low", "high"), [("m2ed", 30, 150), ("tello", 10, 60)])
def test_sampled_poses_have_the_uava_scales(name, low, high):
    drone = load_drone(name)
    poses = sample_poses(drone, K, W, H, 400, np.random.default_rng(1))
    size = K[0, 0] * drone.diagonal / poses.t[:, 2]
    assert size.min() >= low
    assert size.max() <= high
    assert np.percentile(size, 90) - np.percentile(size, 10) > 0.5 * (high - low)
    p = drone.keypoints @ poses.R.transpose(0, 2, 1) + poses.t[:, None]
    uv = (p @ K.T)[..., :2] / p[..., 2:3]
    assert ((uv >= -0.5) & (uv <= [W - 0.5, H - 0.5])).all()  # keep_inside, the study's preprocessing
    assert np.median(poses.tilt_deg) < 20
    assert poses.tilt_deg.max() <= 50
    np.testing.assert_allclose(np.linalg.det(poses.R), 1.0, atol=1e-9)


def test_outside_keypoints_are_allowed_on_request():
    drone = load_drone("m2ed")
    poses = sample_poses(drone, K, W, H, 400, np.random.default_rng(1), PoseSamplingConfig(keep_inside=False))
    p = drone.keypoints @ poses.R.transpose(0, 2, 1) + poses.t[:, None]
    uv = (p @ K.T)[..., :2] / p[..., 2:3]
    assert not ((uv >= -0.5) & (uv <= [W - 0.5, H - 0.5])).all()


def test_bad_input_gets_clear_errors():
    drone = load_drone("m2ed")
    R, t = looking_at_drone(0.0, 2.0)
    with pytest.raises(DroneModelError, match="unknown drone"):
        load_drone("no_such_drone")
    with pytest.raises(ValueError, match="focal length"):
        render_scene(drone, R, t, np.diag([0.0, 252.7, 1.0]), W, H)
    with pytest.raises(ValueError, match="image size"):
        render_scene(drone, R, t, K, 0, H)
    with pytest.raises(ValueError, match="finite"):
        render_scene(drone, R, np.array([0.0, np.nan, 2.0]), K, W, H)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"scene\.supersampling"):
            SceneConfig(supersampling=bad)


def test_more_samples_per_pixel_converge_to_the_pixel_area_integral():
    """Edge pixels approach a 16x16-sample render as the samples grow; the default (4x4) is closer
    than 2x2 by more than half."""
    drone = load_drone("tello")
    poses = sample_poses(drone, K, W, H, 6, np.random.default_rng(9))
    errors = {2: 0.0, 4: 0.0}

    def render(i, factor):
        config = dataclasses.replace(CLEAN, exposure=0.0, supersampling=factor)
        return render_scene(drone, poses.R[i], poses.t[i], K, W, H, seed=i, config=config)

    for i in range(6):
        reference = render(i, 16)
        for factor in errors:
            scene = render(i, factor)
            errors[factor] += np.abs(scene.image.astype(float) - reference.image).mean()
    assert SceneConfig().supersampling == 4
    assert errors[4] < 0.5 * errors[2], errors


@pytest.mark.parametrize("name", ["m2ed", "tello"])
def test_back_face_culling_changes_nothing(name):
    """The built-in meshes are closed with outward normals, so skipping back faces is exact."""
    drone = load_drone(name)
    assert drone.closed_outward
    poses = sample_poses(drone, K, W, H, 6, np.random.default_rng(3))
    culled = [
        render_scene(drone, R, t, K, W, H, seed=i)
        for i, (R, t) in enumerate(zip(poses.R, poses.t, strict=True))
    ]
    drone.__dict__["closed_outward"] = False  # the cached property: render every face
    try:
        for i, (R, t) in enumerate(zip(poses.R, poses.t, strict=True)):
            full = render_scene(drone, R, t, K, W, H, seed=i)
            assert np.array_equal(full.image, culled[i].image)
            assert np.array_equal(full.visibility, culled[i].visibility)
    finally:
        del drone.__dict__["closed_outward"]
