"""Camera models: undistort and distort invert each other per model, agree with OpenCV's projection
of 3D points, leave pinhole cameras alone, and refuse bad models and coefficients."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from drone_pose.geometry.camera import project
from drone_pose.geometry.distortion import (
    Distortion,
    distort_pixels,
    distortion_or_none,
    undistort_pixels,
)

# Calibrations of the kind real cameras have (a wide-angle webcam, a rational-polynomial lens, a fisheye)
MODELS = {
    "plumb_bob": Distortion("plumb_bob", (-0.28, 0.07, 0.0005, -0.0003, 0.0)),
    "rational_polynomial": Distortion(
        "rational_polynomial", (0.5, -0.1, 0.001, 0.001, 0.01, 0.8, -0.05, 0.02)
    ),
    "equidistant": Distortion("equidistant", (-0.02, 0.01, -0.005, 0.001)),
}
K = torch.tensor([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def image_points(count: int = 200, seed: int = 0) -> torch.Tensor:
    """[2,count,2] pixels spread over a 640x480 image."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, count, 2, dtype=torch.float64, generator=generator) * torch.tensor([640.0, 480.0])


@pytest.mark.parametrize("name", list(MODELS))
def test_undistort_inverts_distort_over_the_image(name):
    distortion = MODELS[name]
    ideal = image_points()
    distorted = distort_pixels(ideal, K, distortion)
    assert (distorted - ideal).abs().max() > 20  # a real distortion: tens of pixels at the corners
    undistorted, valid = undistort_pixels(distorted, K, distortion)
    assert valid.all()
    torch.testing.assert_close(undistorted, ideal, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_distort_matches_opencv_projection_of_3d_points(name):
    """distort_pixels(project(x)) is where cv2.projectPoints (cv2.fisheye.projectPoints) puts x."""
    distortion = MODELS[name]
    points = torch.tensor(
        [[0.3, -0.2, 2.0], [-0.5, 0.4, 1.5], [0.0, 0.0, 3.0], [0.9, 0.6, 2.2]], dtype=torch.float64
    )
    ours = distort_pixels(project(points[None], K), K, distortion)[0].numpy()
    coefficients = np.asarray(distortion.coefficients)
    if distortion.fisheye:
        theirs, _ = cv2.fisheye.projectPoints(
            points.numpy()[:, None], np.zeros(3), np.zeros(3), K.numpy(), coefficients
        )
    else:
        theirs, _ = cv2.projectPoints(points.numpy(), np.zeros(3), np.zeros(3), K.numpy(), coefficients)
    np.testing.assert_allclose(ours, theirs.reshape(-1, 2), atol=1e-9)


def test_skewed_intrinsics_round_trip():
    skewed = K.clone()
    skewed[0, 1] = 3.0
    ideal = image_points()
    undistorted, valid = undistort_pixels(
        distort_pixels(ideal, skewed, MODELS["plumb_bob"]), skewed, MODELS["plumb_bob"]
    )
    assert valid.all()
    torch.testing.assert_close(undistorted, ideal, atol=1e-3, rtol=0)


def test_per_image_models_and_pinhole_images_in_one_batch():
    ideal = image_points()
    per_image = [MODELS["equidistant"], None]
    distorted = distort_pixels(ideal, torch.stack([K, K]), per_image)
    assert torch.equal(distorted[1], ideal[1])  # the pinhole image is left alone
    torch.testing.assert_close(distorted[0], distort_pixels(ideal[:1], K, MODELS["equidistant"])[0])
    undistorted, valid = undistort_pixels(distorted, K, per_image)
    assert valid.all()
    torch.testing.assert_close(undistorted, ideal, atol=1e-3, rtol=0)


def test_zero_coefficients_are_the_pinhole_camera_and_cost_nothing():
    uv = image_points()
    for distortion in (Distortion("plumb_bob", (0.0,) * 5), Distortion("", ()), None):
        undistorted, valid = undistort_pixels(uv, K, distortion)
        assert undistorted is uv
        assert valid.all()
        assert distort_pixels(uv, K, distortion) is uv
    assert distortion_or_none("plumb_bob", np.zeros(5)) is None
    assert distortion_or_none("", []) is None
    assert distortion_or_none("equidistant", [0.1, 0, 0, 0]) == Distortion(
        "equidistant", (0.1, 0.0, 0.0, 0.0)
    )


def test_short_coefficient_lists_are_padded_and_zero_extras_accepted():
    assert Distortion("plumb_bob", (0.1, 0.2, 0.0, 0.0)).coefficients == (0.1, 0.2, 0.0, 0.0, 0.0)
    assert Distortion("plumb_bob", (0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)).coefficients == (
        0.1,
        0.2,
        0.0,
        0.0,
        0.0,
    )


@pytest.mark.parametrize(
    ("model", "coefficients", "message"),
    [
        ("plumb_bob", (0.1, float("nan"), 0, 0, 0), "must be finite"),
        ("equidistant", (float("inf"), 0, 0, 0), "must be finite"),
        ("kannala_brandt", (0.1, 0, 0, 0), "unsupported distortion model 'kannala_brandt'"),
        ("", (0.1,), "without a distortion model"),
        ("equidistant", (0.1, 0, 0, 0, 0.2), "equidistant takes at most 4 coefficients"),
        ("plumb_bob", (0, 0, 0, 0, 0, 0.3, 0, 0), "plumb_bob takes at most 5 coefficients"),
    ],
)
def test_bad_models_and_coefficients_are_refused_with_the_reason(model, coefficients, message):
    with pytest.raises(ValueError, match=message):
        Distortion(model, coefficients)


def test_a_point_the_model_cannot_invert_is_flagged():
    """Far outside the field of view a strong barrel distortion folds back: undistortion diverges."""
    barrel = Distortion("plumb_bob", (-0.6, 0.0, 0.0, 0.0, 0.0))
    uv = torch.tensor([[[320.0, 240.0], [2400.0, 2000.0]]], dtype=torch.float64)
    _, valid = undistort_pixels(uv, K, barrel)
    assert valid.tolist() == [[True, False]]


def test_batch_and_distortion_counts_must_agree():
    with pytest.raises(ValueError, match="got 2 images but 3 distortions"):
        undistort_pixels(image_points(), K, [None, None, MODELS["plumb_bob"]])
    with pytest.raises(TypeError, match="must be a Distortion"):
        undistort_pixels(image_points(), K, [("plumb_bob", (0.1,)), None])
