"""FusedEstimator with the shipped M2ED network on rendered 3-camera groups: the fused pose beats
single views, one batched pass serves all views, bad views are left out (garbage images by their
single-view verdict, wrong extrinsics by view gating), and a group with no usable view says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drone_pose.data.synth import render_scene
from drone_pose.drones import load_drone
from drone_pose.fusion.fused_estimator import FusedEstimator
from drone_pose.fusion.rig import camera_poses, rig_poses, split_extrinsics
from drone_pose.geometry.camera import PinholeCamera
from drone_pose.geometry.rotations import axis_angle_to_matrix, geodesic_angle
from drone_pose.inference.estimator import PoseEstimator

from .test_multiview_pnp import look_at_extrinsics

F64 = torch.float64
K = PinholeCamera.uava().K(F64)  # 320x240
RIG = torch.tensor(
    np.stack(
        [
            look_at_extrinsics(np.array([1.6 * np.cos(a), 1.6 * np.sin(a), 0.5]), np.zeros(3))
            for a in (0.3, 2.4, 4.3)
        ]
    )
)


@pytest.fixture(scope="module")
def fused_estimator() -> FusedEstimator:
    return FusedEstimator(PoseEstimator.from_checkpoint(drone="m2ed", device="cpu"))


def flight_groups(count: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Rendered groups images [B,3,240,320,3] of an upright drone near the rig origin, with the
    true poses rig<-drone R [B,3,3], t [B,3]."""
    generator = torch.Generator().manual_seed(seed)
    yaw = torch.rand(count, generator=generator, dtype=F64) * 2 * torch.pi
    R = axis_angle_to_matrix(torch.nn.functional.pad(yaw[:, None], (2, 0)))
    t = (torch.rand(count, 3, generator=generator, dtype=F64) - 0.5) * 0.3
    cam_R, cam_t = split_extrinsics(RIG.expand(count, 3, 4, 4))
    R_cam, t_cam = camera_poses(R, t, cam_R, cam_t)
    drone = load_drone("m2ed")
    images = np.stack(
        [
            np.stack(
                [
                    render_scene(
                        drone, R_cam[b, v].numpy(), t_cam[b, v].numpy(), K.numpy(), 320, 240, seed=10 * b + v
                    ).image
                    for v in range(3)
                ]
            )
            for b in range(count)
        ]
    )
    return images, R, t


@pytest.fixture(scope="module")
def groups():
    return flight_groups(4, seed=1)


def test_the_fused_pose_beats_every_single_view(fused_estimator, groups):
    images, R, t = groups
    fused = fused_estimator.estimate(images, K.expand(3, 3, 3), RIG)
    assert fused.reasons == [""] * 4
    assert bool(fused.views_used.all())
    assert not bool(fused.gated.any())
    fused_error = (fused.t - t).norm(dim=-1)
    assert float(fused_error.max()) < 0.01  # metres
    assert float(geodesic_angle(fused.R, R).rad2deg().max()) < 2.0
    cam_R, cam_t = split_extrinsics(RIG.expand(4, 3, 4, 4))
    _, t_single = rig_poses(fused.views.R.view(4, 3, 3, 3), fused.views.t.view(4, 3, 3), cam_R, cam_t)
    single_error = (t_single - t[:, None]).norm(dim=-1)
    assert float(fused_error.mean()) < 0.5 * float(single_error.mean())
    # the fused covariance is tighter than the views' and finite
    assert bool(torch.isfinite(fused.covariance).all())
    trace = lambda c: c[..., :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    assert bool(
        (trace(fused.covariance) < trace(fused.views.covariance.view(4, 3, 6, 6)).min(1).values).all()
    )
    # groups one at a time give the same as the batch of groups
    one = fused_estimator.estimate(images[2], K.expand(3, 3, 3), RIG)
    assert torch.allclose(one.t[0], fused.t[2], atol=1e-6)
    assert {"views", "fusion", "total"} <= set(one.timings_ms)


def test_a_garbage_view_is_left_out(fused_estimator, groups):
    images, _, t = groups
    noisy = images[0].copy()
    noisy[1] = np.random.default_rng(0).integers(0, 256, noisy[1].shape, dtype=np.uint8)
    fused = fused_estimator.estimate(noisy, K.expand(3, 3, 3), RIG)
    assert fused.views.reasons[1] != ""
    assert fused.views_used[0].tolist() == [True, False, True]
    assert fused.reasons == [""]
    assert float((fused.t[0] - t[0]).norm()) < 0.01


def test_a_view_with_wrong_extrinsics_is_gated(fused_estimator, groups):
    """A camera whose calibration is off by 20 cm and 4 degrees: its own pose disagrees with the
    other two, it is gated, and the fused pose is that of the two good views."""
    images, _, t = groups
    wrong = RIG.clone()
    shift = torch.eye(4, dtype=F64)
    shift[:3, :3] = axis_angle_to_matrix(torch.tensor([[0.0, 0.07, 0.0]], dtype=F64))[0]
    shift[:3, 3] = torch.tensor([0.2, 0.0, 0.0], dtype=F64)
    wrong[2] = shift @ RIG[2]
    gated = fused_estimator.estimate(images[:, :], K.expand(3, 3, 3), wrong)
    assert gated.gated[:, 2].all(), gated.view_distances
    assert not bool(gated.gated[:, :2].any())
    assert bool(gated.views_used[:, :2].all())
    assert float((gated.t - t).norm(dim=-1).max()) < 0.015
    two = fused_estimator.estimate(images[:, :2], K.expand(2, 3, 3), RIG[:2])
    assert torch.allclose(gated.t, two.t, atol=1e-6)
    assert bool((gated.view_distances[:, 2] > fused_estimator.gate_mahalanobis).all())


def test_views_of_different_sizes_share_one_group(fused_estimator, groups):
    images, _, t = groups
    import cv2

    large = cv2.resize(images[3][0], (640, 480), interpolation=cv2.INTER_LINEAR)
    K_large = K.clone()
    K_large[:2] *= 2.0
    K_large[:2, 2] += 0.5  # pixel centres at integers: (x + 0.5) * 2 - 0.5
    fused = fused_estimator.estimate([large, images[3][1], images[3][2]], torch.stack((K_large, K, K)), RIG)
    assert fused.reasons == [""]
    assert float((fused.t[0] - t[3]).norm()) < 0.01


def test_a_group_without_a_usable_view_says_so(fused_estimator):
    noise = np.random.default_rng(1).integers(0, 256, (3, 240, 320, 3), dtype=np.uint8)
    fused = fused_estimator.estimate(noise, K.expand(3, 3, 3), RIG)
    assert fused.reasons == ["no_usable_view"]
    assert not bool(fused.valid.any())
    assert bool(torch.isfinite(fused.R).all() & torch.isfinite(fused.t).all())
    assert not bool(fused.views_used.any())


def test_each_group_is_gated_as_if_it_were_fused_alone():
    """Gating judges every group on its own: fusing 16 keypoint groups (some with a view that
    disagrees) in one call gives each group the views, poses and distances it gets alone."""
    from drone_pose.bench.multiview import _view_estimates, multiview_problems
    from drone_pose.nets import build_network

    estimator = PoseEstimator(
        build_network("hrnet_lite"), load_drone("m2ed").keypoints, (320, 240), device="cpu", warm_up=False
    )
    fuser = FusedEstimator(estimator)
    problem = multiview_problems(16, 4, 0.5, seed=4016)
    x2d, cam_from_rig = problem["x2d"], problem["cam_from_rig"]
    K_views = problem["K"].expand(16, 4, 3, 3)
    views = _view_estimates(estimator, x2d.reshape(-1, x2d.shape[2], 2), K_views.reshape(-1, 3, 3))
    together = fuser.fuse(views, K_views, cam_from_rig)
    assert bool(together.gated.any())
    for b in range(16):
        alone = fuser.fuse(
            views.take(torch.arange(4 * b, 4 * b + 4)), K_views[b : b + 1], cam_from_rig[b : b + 1]
        )
        assert torch.equal(alone.gated[0], together.gated[b])
        assert torch.allclose(alone.t[0], together.t[b], atol=1e-9, rtol=0.0)
        assert torch.allclose(alone.view_distances[0], together.view_distances[b], equal_nan=True, atol=1e-6)
