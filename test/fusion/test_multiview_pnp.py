"""multiview_pnp and multiview_pnp_layer: exactness, an independent reference, symmetries,
gradients, and every degenerate case reported by status, never NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from drone_pose.drones import load_drone
from drone_pose.fusion import multiview_pnp, multiview_pnp_layer
from drone_pose.fusion.rig import camera_poses, split_extrinsics
from drone_pose.geometry.camera import project_points
from drone_pose.geometry.rotations import geodesic_angle, random_rotations
from drone_pose.pnp import PnPStatus, solve_pnp
from drone_pose.pnp.projection import rotvec_to_matrix

F64 = torch.float64
TIGHT = {"tolerance": 1e-14, "max_iterations": 200}


def look_at_extrinsics(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cam_from_rig [4,4] of an optical frame (z forward, y down) at `position` looking at `target`."""
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rig_from_cam = np.eye(4)
    rig_from_cam[:3, :3] = np.stack((right, down, forward), axis=1)
    rig_from_cam[:3, 3] = position
    return np.linalg.inv(rig_from_cam)


def ring_rig(views: int, radius: float = 3.0, height: float = 1.0) -> torch.Tensor:
    """cam_from_rig [V,4,4] of cameras on a ring around the rig origin, looking at it."""
    angles = np.linspace(0.0, 2.0 * np.pi, views, endpoint=False) + 0.3
    return torch.tensor(
        np.stack(
            [
                look_at_extrinsics(np.array([radius * np.cos(a), radius * np.sin(a), height]), np.zeros(3))
                for a in angles
            ]
        )
    )


def problems(batch: int, views: int, noise_px: float = 0.0, seed: int = 0):
    """Drone poses rig<-drone near the origin seen by a ring rig: x2d [B,V,N,2], x3d [N,3], K, rig, R, t."""
    generator = torch.Generator().manual_seed(seed)
    x3d = torch.tensor(load_drone("m2ed").keypoints, dtype=F64)
    R = random_rotations(batch, generator)
    t = (torch.rand(batch, 3, generator=generator, dtype=F64) - 0.5) * 0.6
    rig = ring_rig(views)
    K = torch.tensor([[900.0, 0.0, 640.0], [0.0, 900.0, 360.0], [0.0, 0.0, 1.0]], dtype=F64)
    K = K.expand(views, 3, 3).clone()
    K[:, 0, 0] += torch.arange(views, dtype=F64) * 20.0
    cam_R, cam_t = split_extrinsics(rig.expand(batch, views, 4, 4))
    R_cam, t_cam = camera_poses(R, t, cam_R, cam_t)
    x2d = project_points(x3d, R_cam.reshape(-1, 3, 3), t_cam.reshape(-1, 3), K.repeat(batch, 1, 1))[0]
    x2d = x2d.view(batch, views, -1, 2)
    x2d = x2d + noise_px * torch.randn(x2d.shape, generator=generator, dtype=F64)
    return x2d, x3d, K, rig, R, t


def test_noiseless_views_give_the_exact_pose():
    x2d, x3d, K, rig, R, t = problems(16, 3)
    result = multiview_pnp(x2d, x3d, K, rig, **TIGHT)
    assert bool(result.converged.all()), result.status
    assert float(geodesic_angle(result.R, R).max()) < 1e-8
    assert float((result.t - t).norm(dim=-1).max()) < 1e-9
    assert float(result.cost.max()) < 1e-12


def reference_fit(x2d: np.ndarray, x3d: np.ndarray, K: np.ndarray, rig: np.ndarray, start: np.ndarray):
    """SciPy least squares over (rotation vector, translation) of every view's residuals."""

    def residuals(params: np.ndarray) -> np.ndarray:
        R = Rotation.from_rotvec(params[:3]).as_matrix()
        out = []
        for v in range(len(rig)):
            p = (rig[v, :3, :3] @ (x3d @ R.T + params[3:]).T).T + rig[v, :3, 3]
            uvw = p @ K[v].T
            out.append(uvw[:, :2] / uvw[:, 2:] - x2d[v])
        return np.concatenate(out).ravel()

    fit = least_squares(residuals, start, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return Rotation.from_rotvec(fit.x[:3]).as_matrix(), fit.x[3:]


def test_agrees_with_an_independent_least_squares_fit():
    x2d, x3d, K, rig, R, t = problems(6, 3, noise_px=1.5, seed=3)
    result = multiview_pnp(x2d, x3d, K, rig, **TIGHT)
    for b in range(len(x2d)):
        start = np.concatenate((Rotation.from_matrix(R[b].numpy()).as_rotvec(), t[b].numpy() + 0.01))
        R_ref, t_ref = reference_fit(x2d[b].numpy(), x3d.numpy(), K.numpy(), rig.numpy(), start)
        assert np.allclose(result.R[b].numpy(), R_ref, atol=1e-8)
        assert np.allclose(result.t[b].numpy(), t_ref, atol=1e-9)


def test_permuting_the_views_leaves_the_result_unchanged():
    x2d, x3d, K, rig, _, _ = problems(8, 4, noise_px=2.0, seed=4)
    result = multiview_pnp(x2d, x3d, K, rig, **TIGHT)
    order = torch.tensor([2, 0, 3, 1])
    permuted = multiview_pnp(x2d[:, order], x3d, K[order], rig[order], **TIGHT)
    assert torch.allclose(permuted.R, result.R, atol=1e-10)
    assert torch.allclose(permuted.t, result.t, atol=1e-10)
    assert torch.allclose(permuted.covariance, result.covariance, rtol=1e-6, atol=1e-14)


def test_one_view_is_the_single_view_solution_in_the_rig_frame():
    x2d, x3d, K, rig, _, _ = problems(8, 3, noise_px=1.0, seed=5)
    weights = torch.zeros(8, 3, x3d.shape[0], dtype=F64)
    weights[:, 1] = 1.0
    x2d = x2d.clone()
    x2d[:, [0, 2]] = float("nan")  # missing views may carry anything
    fused = multiview_pnp(x2d, x3d, K, rig, weights, **TIGHT)
    single = solve_pnp(x2d[:, 1], x3d, K[1], **TIGHT)
    cam_R, cam_t = split_extrinsics(rig[1])
    assert bool(fused.converged.all())
    assert torch.allclose(cam_R @ fused.R, single.R, atol=1e-8)
    assert torch.allclose((cam_R @ fused.t.unsqueeze(-1)).squeeze(-1) + cam_t, single.t, atol=1e-8)
    # the covariance is the single view's, rotated into the rig frame
    A = torch.block_diag(cam_R, cam_R)
    assert torch.allclose(A @ fused.covariance @ A.T, single.covariance, rtol=1e-5, atol=1e-15)


def test_a_second_view_shrinks_the_depth_uncertainty():
    x2d, x3d, K, rig, _, _ = problems(8, 2, noise_px=0.5, seed=6)
    one = torch.zeros(8, 2, x3d.shape[0], dtype=F64)
    one[:, 0] = 1.0
    single = multiview_pnp(x2d, x3d, K, rig, one)
    fused = multiview_pnp(x2d, x3d, K, rig)
    trace = lambda c: c[:, :3, :3].diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    assert bool((trace(fused.covariance) < 0.5 * trace(single.covariance)).all())


def test_missing_keypoints_and_views_never_give_nan():
    x2d, x3d, K, rig, R, t = problems(5, 3, noise_px=0.0, seed=7)
    count = x3d.shape[0]
    weights = torch.ones(5, 3, count, dtype=F64)
    x2d = x2d.clone()
    weights[0, :, : count - 3] = 0.0  # 3 keypoints per view: no single view is usable
    weights[1] = 0.0  # no view at all
    x2d[1] = float("nan")
    weights[2, 0, :2] = 0.0  # a few keypoints missing in one view
    x2d[2, 0, :2] = float("inf")
    x2d[3, 2, 0] = float("nan")  # a NaN keypoint that is still weighted
    result = multiview_pnp(x2d, x3d, K, rig, weights, **TIGHT)
    statuses = [PnPStatus(int(s)) for s in result.status]
    assert statuses[0] == PnPStatus.NO_USABLE_VIEW
    assert statuses[1] == PnPStatus.NO_USABLE_VIEW
    assert statuses[2] == PnPStatus.CONVERGED
    assert statuses[3] == PnPStatus.NON_FINITE_INPUT
    assert statuses[4] == PnPStatus.CONVERGED
    for tensor in (result.R, result.t, result.covariance):
        assert bool(torch.isfinite(tensor).all())
    assert torch.allclose(result.R[2], R[2], atol=1e-8)
    assert torch.allclose(result.t[2], t[2], atol=1e-9)
    assert torch.equal(result.R[1], torch.eye(3, dtype=F64))
    assert bool((result.t[1] == 0).all())


def test_a_view_behind_its_camera_is_reported():
    """Two cameras at one place facing opposite ways, each seeing the drone in front of it: every
    pose puts the drone behind one of them."""
    x2d, x3d, K, rig, _, _ = problems(2, 2, seed=8)
    rig, x2d = rig.clone(), x2d.clone()
    turned = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=F64))  # 180 deg about y
    rig[1] = turned @ rig[0]
    K[1] = K[0]
    x2d[:, 1] = x2d[:, 0]
    result = multiview_pnp(x2d, x3d, K, rig)
    assert {PnPStatus(int(s)) for s in result.status} <= {PnPStatus.BEHIND_CAMERA, PnPStatus.SOLVER_FAILURE}
    assert not bool(result.converged.any())
    assert bool(torch.isfinite(result.R).all() & torch.isfinite(result.t).all())
    assert bool(torch.isfinite(result.covariance).all())


def test_malformed_inputs_raise_clear_errors():
    x2d, x3d, K, rig, _, _ = problems(1, 2)
    with pytest.raises(ValueError, match="x2d must have shape"):
        multiview_pnp(x2d[0], x3d, K, rig)
    with pytest.raises(ValueError, match="cam_from_rig"):
        multiview_pnp(x2d, x3d, K, rig[:1])
    sheared = rig.clone()
    sheared[0, 0, 1] += 0.1
    with pytest.raises(ValueError, match="not a rigid transform"):
        multiview_pnp(x2d, x3d, K, sheared)


def test_float32_inputs_are_solved_in_float64_and_returned_in_float32():
    x2d, x3d, K, rig, _R, t = problems(4, 3, seed=9)
    result = multiview_pnp(x2d.float(), x3d.float(), K.float(), rig.float())
    assert result.R.dtype == torch.float32
    assert bool(result.converged.all())
    assert float((result.t.double() - t).norm(dim=-1).max()) < 1e-4


@pytest.mark.parametrize("huber", [None, 2.0])
def test_exact_gradients_match_finite_differences(huber):
    x2d, x3d, K, rig, _, _ = problems(2, 3, noise_px=1.5, seed=10)
    weights = torch.rand(2, 3, x3d.shape[0], dtype=F64, generator=torch.Generator().manual_seed(1)) + 0.5
    # extrinsics perturbed on the manifold of rigid transforms: rotation vectors and translations
    rig_steps = torch.zeros(3, 6, dtype=F64, requires_grad=True)
    inputs = (x2d.clone().requires_grad_(), weights.clone().requires_grad_(), rig_steps)

    def layer(x2d, weights, rig_steps):
        moved = torch.cat((rotvec_to_matrix(rig_steps[:, 3:]) @ rig[:, :3, :3], rig[:, :3, 3:]), dim=-1)
        moved = torch.cat((moved, rig[:, 3:]), dim=-2) + torch.cat(
            (torch.nn.functional.pad(rig_steps[:, :3, None], (3, 0)), torch.zeros(3, 1, 4, dtype=F64)), dim=1
        )
        result = multiview_pnp_layer(x2d, x3d, K, moved, weights, grad="exact", huber=huber, **TIGHT)
        return result.R, result.t

    assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gauss_newton_gradients_are_close_to_exact_ones_for_small_residuals():
    x2d, x3d, K, rig, _, _ = problems(4, 3, noise_px=0.3, seed=11)
    grads = {}
    for mode in ("exact", "gauss_newton"):
        points = x2d.clone().requires_grad_()
        result = multiview_pnp_layer(points, x3d, K, rig, grad=mode, **TIGHT)
        (result.t.sum() + result.R[:, 0, 0].sum()).backward()
        grads[mode] = points.grad
    scale = grads["exact"].abs().max()
    assert float((grads["exact"] - grads["gauss_newton"]).abs().max()) < 0.02 * float(scale)
