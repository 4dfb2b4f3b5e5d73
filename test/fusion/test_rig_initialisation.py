"""Rig self-calibration, stage 1: per-frame relative poses, robust averaging over frames, chaining,
the online accumulator and the Rig it writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drone_pose.data.flights import look_at
from drone_pose.fusion.pose_averaging import (
    AveragingConfig,
    average_poses,
    compose_with_covariance,
    invert_with_covariance,
    pose_errors,
)
from drone_pose.fusion.rig_file import load_rig_file, save_rig_file
from drone_pose.fusion.rig_initialisation import (
    RigAccumulator,
    drone_in_reference,
    estimate_rig,
    extrinsics_errors,
    nominal_covariance,
    relative_to_reference,
)
from drone_pose.geometry.rotations import axis_angle_to_matrix, random_rotations

F64 = torch.float64


def ground_rig(azimuths_deg: tuple[float, ...] = (0.0, 50.0, -50.0), radius: float = 5.0) -> torch.Tensor:
    """cam_from_rig [V,4,4] of cameras on a circle around the origin, looking at it."""
    T = torch.eye(4, dtype=F64).repeat(len(azimuths_deg), 1, 1)
    for v, azimuth in enumerate(azimuths_deg):
        a = math.radians(180.0 + azimuth)
        position = np.array([radius * math.cos(a), radius * math.sin(a), 1.0])
        R_world_camera = look_at(position, np.zeros(3))
        T[v, :3, :3] = torch.tensor(R_world_camera.T)
        T[v, :3, 3] = torch.tensor(-R_world_camera.T @ position)
    return T


def flight(cam_from_rig: torch.Tensor, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """True camera <- drone poses R [B,V,3,3], t [B,V,3] of a drone near the origin."""
    generator = torch.Generator().manual_seed(seed)
    R_rig = random_rotations(frames, generator)
    t_rig = 0.7 * torch.randn(frames, 3, generator=generator, dtype=F64)
    cam_R, cam_t = cam_from_rig[:, :3, :3], cam_from_rig[:, :3, 3]
    return cam_R @ R_rig[:, None], (cam_R @ t_rig[:, None, :, None]).squeeze(-1) + cam_t


def single_view_noise(
    R: torch.Tensor,
    t: torch.Tensor,
    seed: int = 1,
    rotation_std_deg: float = 1.5,
    lateral_std_m: float = 0.01,
    depth_std_m: float = 0.08,
    outlier_fraction: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PnP-like noisy poses (mostly along the line of sight), their covariances, and gross outliers
    (a random orientation and a 1 m jump) in `outlier_fraction` of the views; also the outlier mask."""
    generator = torch.Generator().manual_seed(seed)
    shape = R.shape[:2]
    rotation_std = math.radians(rotation_std_deg)
    ray = t / t.norm(dim=-1, keepdim=True)
    R_noisy = axis_angle_to_matrix(rotation_std * torch.randn(*shape, 3, generator=generator, dtype=F64)) @ R
    lateral = lateral_std_m * torch.randn(*shape, 3, generator=generator, dtype=F64)
    t_noisy = t + lateral + ray * depth_std_m * torch.randn(*shape, 1, generator=generator, dtype=F64)
    covariance = torch.zeros(*shape, 6, 6, dtype=F64)
    outer = ray[..., :, None] * ray[..., None, :]
    covariance[..., :3, :3] = (
        lateral_std_m**2 * torch.eye(3, dtype=F64) + (depth_std_m**2 - lateral_std_m**2) * outer
    )
    covariance[..., 3:, 3:] = rotation_std**2 * torch.eye(3, dtype=F64)
    outlier = torch.rand(shape, generator=generator) < outlier_fraction
    wild_R = random_rotations(shape.numel(), generator).view(*shape, 3, 3)
    wild_t = t_noisy + torch.randn(*shape, 3, generator=generator, dtype=F64)
    R_noisy = torch.where(outlier[..., None, None], wild_R, R_noisy)
    t_noisy = torch.where(outlier[..., None], wild_t, t_noisy)
    return R_noisy, t_noisy, covariance, outlier


def numeric_jacobian(function, R: torch.Tensor, t: torch.Tensor, step: float = 1e-6) -> torch.Tensor:
    """d errors(function(perturbed)) / d (dt, dw) [6,6] at (R, t), PnP error convention."""
    R_0, t_0 = function(R, t)
    columns = []
    for i in range(6):
        delta = torch.zeros(6, dtype=F64)
        delta[i] = step
        R_1, t_1 = function(axis_angle_to_matrix(delta[3:]) @ R, t + delta[:3])
        columns.append(pose_errors(R_1, t_1, R_0, t_0) / step)
    return torch.stack(columns, dim=-1)


def test_inversion_and_composition_propagate_covariances_to_first_order():
    generator = torch.Generator().manual_seed(3)
    R_a, R_b = random_rotations(2, generator)
    t_a, t_b = torch.randn(2, 3, generator=generator, dtype=F64)
    eye = torch.eye(6, dtype=F64)
    J = numeric_jacobian(lambda R, t: invert_with_covariance(R, t, eye)[:2], R_a, t_a)
    assert torch.allclose(invert_with_covariance(R_a, t_a, eye)[2], J @ J.T, atol=1e-5)
    J_a = numeric_jacobian(lambda R, t: compose_with_covariance(R, t, eye, R_b, t_b, eye)[:2], R_a, t_a)
    J_b = numeric_jacobian(lambda R, t: compose_with_covariance(R_a, t_a, eye, R, t, eye)[:2], R_b, t_b)
    _, _, covariance = compose_with_covariance(R_a, t_a, eye, R_b, t_b, eye)
    assert torch.allclose(covariance, J_a @ J_a.T + J_b @ J_b.T, atol=1e-5)


def test_one_frame_gives_every_camera_relative_to_the_reference():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 4)
    frames = relative_to_reference(R, t, reference=1)
    truth = cam_from_rig @ torch.linalg.inv(cam_from_rig[1])
    assert torch.allclose(frames.cam_from_ref, truth.expand(4, 3, 4, 4), atol=1e-12)
    assert frames.valid.all()
    assert torch.equal(frames.covariance[:, 1], torch.zeros(4, 6, 6, dtype=F64))
    assert torch.equal(frames.R_drone, R[:, 1])
    assert torch.equal(frames.t_drone, t[:, 1])


def test_the_relative_pose_covariance_matches_its_scatter():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 1)
    samples = 4000
    R_many, t_many = R.expand(samples, 3, 3, 3), t.expand(samples, 3, 3)
    R_noisy, t_noisy, covariance, _ = single_view_noise(R_many, t_many, rotation_std_deg=0.5)
    noisy = relative_to_reference(R_noisy, t_noisy, covariance, reference=0)
    truth = cam_from_rig[2] @ torch.linalg.inv(cam_from_rig[0])
    errors = pose_errors(
        noisy.cam_from_ref[:, 2, :3, :3], noisy.cam_from_ref[:, 2, :3, 3], truth[:3, :3], truth[:3, 3]
    )
    squared = (
        errors.unsqueeze(1) @ torch.linalg.inv(noisy.covariance[:, 2]) @ errors.unsqueeze(-1)
    ).flatten()
    assert float(squared.mean()) == pytest.approx(6.0, rel=0.1)  # chi-square, 6 degrees of freedom


@pytest.mark.parametrize("with_covariance", [True, False])
def test_noise_free_poses_give_the_rig_exactly(tmp_path, with_covariance):
    cam_from_rig = ground_rig((0.0, 50.0, -50.0, 100.0))
    R, t = flight(cam_from_rig, 30)
    covariance = nominal_covariance(t) if with_covariance else None
    estimate = estimate_rig(R, t, covariance, reference=2)
    errors = extrinsics_errors(estimate.cam_from_ref, cam_from_rig, 2)
    assert max(errors["rotation_deg"]) < 1e-9
    assert max(errors["position_m"]) < 1e-9
    assert estimate.resolved.all()
    assert estimate.outliers.sum() == 0
    rig = estimate.to_rig(["a", "b", "c", "d"], ["a_optical", "b_optical", "c_optical", "d_optical"])
    assert rig.rig_frame == "c_optical"
    loaded = load_rig_file(save_rig_file(rig, tmp_path / "rig.yaml"))
    assert np.allclose(
        loaded.cam_from_rig, (cam_from_rig @ torch.linalg.inv(cam_from_rig[2])).numpy(), atol=1e-9
    )


def test_noisy_poses_with_gross_outliers_average_to_the_rig():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 300)
    R_noisy, t_noisy, covariance, outlier = single_view_noise(R, t, outlier_fraction=0.2)
    estimate = estimate_rig(R_noisy, t_noisy, covariance, reference=0)
    errors = extrinsics_errors(estimate.cam_from_ref, cam_from_rig, 0)
    assert max(errors["rotation_deg"]) < 0.5
    assert np.nanmax(errors["position_percent"]) < 1.0
    # the errors are within about 4 of their predicted standard deviations
    assert all(
        e < 4 * s + 0.05
        for e, s in zip(errors["rotation_deg"], estimate.rotation_std_deg().tolist(), strict=True)
    )
    assert all(
        e < 4 * s + 0.002
        for e, s in zip(errors["position_m"], estimate.position_std_m().tolist(), strict=True)
    )
    # the pairs' outliers are the frames where either view was corrupted, nearly all of them
    corrupted = int((outlier[:, 0] | outlier[:, 1]).sum())
    assert abs(int(estimate.outliers[0, 1]) - corrupted) <= 0.1 * corrupted
    assert int(estimate.inliers[0, 1] + estimate.outliers[0, 1]) == 300
    # the naive mean of the same frames is far off: the test has teeth
    frames = relative_to_reference(R_noisy, t_noisy, covariance, reference=0)
    naive_t = frames.cam_from_ref[:, 1, :3, 3].mean(0)
    assert float((naive_t - estimate.cam_from_ref[1, :3, 3]).norm()) > 0.05


def test_the_order_of_the_frames_does_not_matter():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 200, seed=5)
    R_noisy, t_noisy, covariance, _ = single_view_noise(R, t, seed=6, outlier_fraction=0.2)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(7))
    first = estimate_rig(R_noisy, t_noisy, covariance, reference=0)
    second = estimate_rig(R_noisy[order], t_noisy[order], covariance[order], reference=0)
    assert torch.allclose(first.cam_from_ref, second.cam_from_ref, atol=1e-8)
    assert torch.equal(first.outliers, second.outliers)
    # the uncertainty's time blocks follow the frames' times: given them, nothing changes
    third = estimate_rig(R_noisy[order], t_noisy[order], covariance[order], reference=0, order=order)
    assert torch.allclose(first.cam_from_ref, third.cam_from_ref, atol=1e-8)
    assert torch.allclose(first.covariance, third.covariance, rtol=1e-6, atol=1e-14)


def test_cameras_that_never_see_the_drone_with_the_reference_are_chained_or_flagged():
    cam_from_rig = ground_rig((0.0, 50.0, 100.0, -50.0))
    R, t = flight(cam_from_rig, 120, seed=8)
    R_noisy, t_noisy, covariance, _ = single_view_noise(R, t, seed=9, rotation_std_deg=0.5, depth_std_m=0.03)
    valid = torch.ones(120, 4, dtype=torch.bool)
    valid[:60, 2] = False  # camera 2 only in frames without camera 0
    valid[60:, 0] = False
    valid[:, 3] = False  # camera 3 never
    R_noisy[:, 3] = math.nan  # invalid views may hold anything
    estimate = estimate_rig(R_noisy, t_noisy, covariance, valid, reference=0)
    assert estimate.paths == ((0,), (0, 1), (0, 1, 2), ())
    assert estimate.resolved.tolist() == [True, True, True, False]
    assert int(estimate.co_observations[0, 2]) == 0
    errors = extrinsics_errors(estimate.cam_from_ref[:3], cam_from_rig[:3], 0)
    assert max(errors["rotation_deg"]) < 0.3
    assert np.nanmax(errors["position_percent"]) < 1.0
    assert torch.isfinite(estimate.cam_from_ref).all()
    assert torch.isfinite(estimate.covariance).all()
    assert torch.equal(estimate.cam_from_ref[3], torch.eye(4, dtype=F64))
    with pytest.raises(ValueError, match="cameras d have no estimate"):
        estimate.to_rig(list("abcd"), ["a_o", "b_o", "c_o", "d_o"])
    # the automatic reference is the camera with the most estimated pairs: camera 1
    assert estimate_rig(R_noisy, t_noisy, covariance, valid).reference == 1


@pytest.mark.parametrize(
    "case", ["no_frames", "one_frame", "all_invalid", "nan_poses", "zero_covariances", "zero_weights"]
)
def test_degenerate_input_is_flagged_never_nan(case):
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 5)
    covariance = nominal_covariance(t)
    valid, weights = torch.ones(5, 3, dtype=torch.bool), None
    if case == "no_frames":
        R, t, covariance, valid = R[:0], t[:0], covariance[:0], valid[:0]
    elif case == "one_frame":
        R, t, covariance, valid = R[:1], t[:1], covariance[:1], valid[:1]
    elif case == "all_invalid":
        valid[:] = False
    elif case == "nan_poses":
        R, t = torch.full_like(R, math.nan), torch.full_like(t, math.inf)
    elif case == "zero_covariances":
        covariance = torch.zeros_like(covariance)
    else:
        weights = torch.zeros(5, 3, dtype=F64)
    estimate = estimate_rig(R, t, covariance, valid, weights, reference=0)
    assert torch.isfinite(estimate.cam_from_ref).all()
    assert torch.isfinite(estimate.covariance).all()
    assert torch.isfinite(estimate.rotation_std_deg()).all()
    assert torch.isfinite(estimate.position_std_m()).all()
    assert estimate.resolved.tolist() == [True, False, False]  # the reference only
    frames = relative_to_reference(R, t, covariance, valid, 0, weights)
    assert torch.isfinite(frames.cam_from_ref).all()
    assert torch.isfinite(frames.covariance).all()
    assert frames.valid[:, 1:].all() if case == "one_frame" else not frames.valid.any()


def test_average_poses_needs_min_inliers():
    R = torch.eye(3, dtype=F64).expand(2, 2, 3, 3)
    t = torch.zeros(2, 2, 3, dtype=F64)
    covariance = torch.eye(6, dtype=F64).expand(2, 2, 6, 6)
    usable = torch.tensor([[True, True], [True, False]])
    averaged = average_poses(R, t, covariance, usable, AveragingConfig(min_inliers=2))
    assert averaged.estimated.tolist() == [True, False]
    assert averaged.samples.tolist() == [2, 1]
    assert torch.equal(averaged.covariance[1], torch.zeros(6, 6, dtype=F64))


def test_drone_in_reference_fuses_all_views_through_the_extrinsics():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 6, seed=11)
    cam_from_ref = cam_from_rig @ torch.linalg.inv(cam_from_rig[0])
    valid = torch.ones(6, 3, dtype=torch.bool)
    valid[:, 0] = False  # the reference camera itself sees nothing
    R_ref, t_ref, covariance, found = drone_in_reference(R, t, cam_from_ref, nominal_covariance(t), valid)
    assert found.all()
    assert torch.allclose(R_ref, R[:, 0], atol=1e-10)
    assert torch.allclose(t_ref, t[:, 0], atol=1e-10)
    assert (torch.linalg.eigvalsh(covariance) > 0).all()
    none = drone_in_reference(R, t, cam_from_ref, valid=torch.zeros(6, 3, dtype=torch.bool))
    assert not none[3].any()
    assert all(torch.isfinite(x).all() for x in none[:3])


def test_the_accumulator_matches_the_batch_estimate_and_bounds_its_memory():
    cam_from_rig = ground_rig()
    R, t = flight(cam_from_rig, 100, seed=12)
    R_noisy, t_noisy, covariance, _ = single_view_noise(R, t, seed=13, outlier_fraction=0.1)
    valid = torch.ones(100, 3, dtype=torch.bool)
    valid[::10, 1:] = False  # 10 frames with one usable view: nothing to keep
    accumulator = RigAccumulator(3, capacity=200, reference=0)
    for start in range(0, 100, 7):  # group by group, in uneven batches
        window = slice(start, start + 7)
        accumulator.add(R_noisy[window], t_noisy[window], covariance[window], valid[window])
    accumulator.add(R_noisy[0], t_noisy[0], covariance[0], valid[0])  # a single [V,...] frame
    assert (accumulator.frames_seen, accumulator.frames_kept) == (101, 90)
    assert accumulator.usable_views.tolist() == [101, 90, 90]
    batch = estimate_rig(R_noisy, t_noisy, covariance, valid, reference=0)
    online = accumulator.estimate()
    assert torch.allclose(online.cam_from_ref, batch.cam_from_ref, atol=1e-8)
    assert online.frames == 90

    for policy in ("reservoir", "window"):
        small = RigAccumulator(3, capacity=30, policy=policy, seed=1)
        for b in range(100):
            small.add(R_noisy[b], t_noisy[b], covariance[b])
        assert (small.frames_seen, small.frames_kept) == (100, 30)
        estimate = small.estimate()
        assert estimate.frames == 30
        assert estimate.resolved.all()
        errors = extrinsics_errors(estimate.cam_from_ref, cam_from_rig, estimate.reference)
        assert max(errors["rotation_deg"]) < 1.5
    with pytest.raises(ValueError, match="policy"):
        RigAccumulator(3, policy="fifo")
    with pytest.raises(ValueError, match="expected 3 views"):
        accumulator.add(R_noisy[:, :2], t_noisy[:, :2])


def test_errors_correlated_in_time_widen_the_uncertainty():
    """Samples whose errors persist over runs of 25 (a network's error follows the slowly changing
    view): the time blocks see the scatter that the samples' own covariances cannot."""
    generator = torch.Generator().manual_seed(14)
    runs, length, std = 40, 25, 0.01
    persistent = std * torch.randn(runs, 1, 6, generator=generator, dtype=F64).expand(runs, length, 6)
    errors = (persistent + 0.1 * std * torch.randn(runs, length, 6, generator=generator, dtype=F64)).reshape(
        1, -1, 6
    )
    R = axis_angle_to_matrix(errors[..., 3:])
    covariance = (std**2 * torch.eye(6, dtype=F64)).expand(1, runs * length, 6, 6)
    usable = torch.ones(1, runs * length, dtype=torch.bool)
    blocked = average_poses(R, errors[..., :3], covariance, usable)
    independent = average_poses(R, errors[..., :3], covariance, usable, AveragingConfig(time_blocks=0))
    assert blocked.time_blocks.tolist() == [10]
    assert independent.time_blocks.tolist() == [0]
    # the mean of 40 independent runs has variance std^2 / 40 per axis; 1000 independent samples: / 1000
    assert float(independent.covariance[0].diagonal().mean()) == pytest.approx(std**2 / 1000, rel=0.2)
    assert 0.3 < float(blocked.covariance[0].diagonal().mean()) / (std**2 / runs) < 3.0
