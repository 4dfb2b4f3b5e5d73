"""Rotation helpers: ROS quaternion order, geodesic angles, pose algebra."""

from __future__ import annotations

import math

import pytest
import roma
import torch

from drone_pose.geometry.rotations import (
    axis_angle_to_matrix,
    compose_poses,
    geodesic_angle,
    invert_pose,
    matrix_to_quaternion_xyzw,
    matrix_to_rotation_vector,
    quaternion_xyzw_to_matrix,
    random_rotations,
    rotation_error_mask,
)


def test_quaternion_is_xyzw_like_ros():
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    q = matrix_to_quaternion_xyzw(R)
    assert q.tolist() == pytest.approx([0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    assert R @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) == pytest.approx(
        torch.tensor([0.0, 1.0, 0.0]), abs=1e-12
    )


def test_quaternion_round_trip_and_positive_w():
    R = random_rotations(100, torch.Generator().manual_seed(0))
    q = matrix_to_quaternion_xyzw(R)
    assert (q[:, 3] >= 0).all()
    torch.testing.assert_close(quaternion_xyzw_to_matrix(q), R)
    torch.testing.assert_close(quaternion_xyzw_to_matrix(3.0 * q), R)  # normalised first


def test_bad_quaternions_are_rejected():
    with pytest.raises(ValueError, match="non-zero norm"):
        quaternion_xyzw_to_matrix(torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        quaternion_xyzw_to_matrix(torch.tensor([math.nan, 0.0, 0.0, 1.0]))


def test_geodesic_angle_of_known_rotations():
    R = random_rotations(5, torch.Generator().manual_seed(1))
    for angle in (0.0, 0.1, 1.0, 3.0):
        delta = axis_angle_to_matrix(torch.tensor([0.0, angle, 0.0], dtype=torch.float64)).expand(5, 3, 3)
        torch.testing.assert_close(geodesic_angle(R, R @ delta), torch.full((5,), angle, dtype=torch.float64))


def test_rotation_error_mask_flags_non_rotations():
    R = random_rotations(4, torch.Generator().manual_seed(2))
    R[1] = -R[1]  # reflection: det = -1
    R[2] = 2 * R[2]  # not orthonormal
    R[3, 0, 0] = math.nan
    assert rotation_error_mask(R).tolist() == [False, True, True, True]


def test_pose_inverse_and_composition():
    generator = torch.Generator().manual_seed(4)
    R = random_rotations(3, generator)
    t = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    R_inv, t_inv = invert_pose(R, t)
    R_id, t_id = compose_poses(R, t, R_inv, t_inv)
    torch.testing.assert_close(R_id, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    torch.testing.assert_close(t_id, torch.zeros(3, 3, dtype=torch.float64))


def test_rotation_vectors_match_roma_at_every_angle():
    generator = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(
        torch.randn(4000, 3, generator=generator, dtype=torch.float64), dim=-1
    )
    exponents = torch.rand(1000, generator=generator, dtype=torch.float64) * 12
    angles = torch.cat(
        (
            torch.rand(1000, generator=generator, dtype=torch.float64) * math.pi,
            10.0**-exponents,  # tiny angles
            math.pi - 10.0 ** -(exponents * 0.8),  # near the half turn
            math.pi / 2 + (torch.rand(1000, generator=generator, dtype=torch.float64) - 0.5) * 1e-6,
        )
    )
    R = roma.rotvec_to_rotmat(axes * angles[:, None])
    rotvec = matrix_to_rotation_vector(R)
    assert torch.allclose(rotvec.norm(dim=-1), angles, atol=1e-12, rtol=0.0)
    # the vector itself, except at the half turn where +axis and -axis give the same rotation
    away = angles < math.pi - 1e-6
    assert torch.allclose(rotvec[away], roma.rotmat_to_rotvec(R)[away], atol=1e-12, rtol=0.0)
    assert torch.allclose(roma.rotvec_to_rotmat(rotvec), R, atol=1e-12, rtol=0.0)
    assert torch.equal(
        matrix_to_rotation_vector(torch.eye(3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64)
    )
