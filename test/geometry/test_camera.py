"""Pinhole camera: validation, projection, back-projection and intrinsics for resized images."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from drone_pose.geometry.camera import (
    PinholeCamera,
    backproject,
    crop_intrinsics,
    intrinsics_matrix,
    project,
    project_points,
    scale_intrinsics,
    validate_intrinsics,
)
from drone_pose.geometry.rotations import random_rotations


def test_uava_camera_matches_the_papers():
    camera = PinholeCamera.uava()
    assert (camera.width, camera.height) == (320, 240)
    assert camera.fx == pytest.approx(252.7, abs=0.05)
    assert camera.fy == camera.fx
    assert (camera.cx, camera.cy) == (160.0, 120.0)


@pytest.mark.parametrize(
    ("K", "message"),
    [
        (torch.tensor([[0.0, 0, 160], [0, 250, 120], [0, 0, 1]]), "focal length"),
        (torch.tensor([[250.0, 0, 160], [0, -1, 120], [0, 0, 1]]), "focal length"),
        (torch.tensor([[math.nan, 0, 160], [0, 250, 120], [0, 0, 1]]), "non-finite"),
        (torch.tensor([[250.0, 0, 160], [0, 250, 120], [0, 1, 1]]), "last row"),
        (torch.eye(4), "shape"),
    ],
)
def test_bad_intrinsics_are_rejected_with_the_reason(K, message):
    with pytest.raises(ValueError, match=message):
        validate_intrinsics(K)


def test_zero_focal_camera_cannot_be_built():
    with pytest.raises(ValueError, match="focal length"):
        PinholeCamera(0.0, 250.0, 160.0, 120.0, 320, 240)
    with pytest.raises(ValueError, match="image size"):
        PinholeCamera(250.0, 250.0, 160.0, 120.0, 0, 240)


def test_projection_of_a_known_point():
    K = intrinsics_matrix(250.0, 260.0, 160.0, 120.0, dtype=torch.float64)
    uv = project(torch.tensor([[[1.0, -0.5, 5.0]]], dtype=torch.float64), K)
    assert uv[0, 0].tolist() == pytest.approx([160 + 250 * 0.2, 120 - 260 * 0.1])


def test_projection_matches_opencv():
    generator = torch.Generator().manual_seed(3)
    R = random_rotations(4, generator)
    t = torch.tensor(
        [[0.1, -0.2, 5.0], [0.0, 0.0, 3.0], [1.0, 0.5, 12.0], [-0.3, 0.2, 2.0]], dtype=torch.float64
    )
    x3d = torch.rand(7, 3, generator=generator, dtype=torch.float64) - 0.5
    K = PinholeCamera.uava().K(torch.float64)
    uv, depth = project_points(x3d, R, t, K)
    for b in range(4):
        rvec, _ = cv2.Rodrigues(R[b].numpy())
        expected, _ = cv2.projectPoints(x3d.numpy(), rvec, t[b].numpy(), K.numpy(), None)
        np.testing.assert_allclose(uv[b].numpy(), expected[:, 0], atol=1e-9)
    assert (depth > 0).all()


def test_backprojection_inverts_projection():
    K = intrinsics_matrix(300.0, 310.0, 150.0, 100.0, dtype=torch.float64).expand(2, 3, 3)
    x_cam = torch.tensor(
        [[[0.3, -0.2, 4.0], [-1.0, 0.5, 9.0]], [[0.0, 0.0, 1.0], [2.0, 2.0, 20.0]]], dtype=torch.float64
    )
    recovered = backproject(project(x_cam, K), x_cam[..., 2], K)
    torch.testing.assert_close(recovered, x_cam)


def test_scaled_intrinsics_follow_the_image_resize():
    """A point's pixel in a resized image equals its projection with the scaled intrinsics."""
    camera = PinholeCamera.uava()
    K = camera.K(torch.float64)
    point = torch.tensor([[[0.4, -0.3, 6.0]]], dtype=torch.float64)
    uv = project(point, K)[0, 0]
    # Resize with pixel centres at integer coordinates: u' = s (u + 0.5) - 0.5.
    for scale in (0.25, 0.5, 2.0):
        expected = scale * (uv + 0.5) - 0.5
        torch.testing.assert_close(project(point, scale_intrinsics(K, scale, scale))[0, 0], expected)
    resized = camera.resized(80, 60)
    torch.testing.assert_close(resized.K(torch.float64), scale_intrinsics(K, 0.25, 0.25))
    with pytest.raises(ValueError, match="scale"):
        scale_intrinsics(K, 0.0, 1.0)


def test_crop_moves_the_principal_point():
    K = intrinsics_matrix(250.0, 250.0, 160.0, 120.0)
    cropped = crop_intrinsics(K, 10.0, 20.0)
    assert cropped[0, 2].item() == 150.0
    assert cropped[1, 2].item() == 100.0
