"""solve_pnp: accuracy against OpenCV, convergence, invariances, covariance and bad input."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from drone_pose.bench.pnp_problems import generic_problems, pose_errors_deg_m, uava_problems
from drone_pose.geometry.camera import project_points
from drone_pose.geometry.rotations import geodesic_angle
from drone_pose.pnp import PnPStatus, solve_pnp

F64 = torch.float64


@pytest.mark.parametrize("count", [9, 20])
def test_noise_free_problems_are_solved_exactly(count):
    for problems in (
        generic_problems(64, count, noise_px=0.0, seed=1),
        uava_problems(64, count, noise_px=0.0, seed=1),
    ):
        result = solve_pnp(problems.x2d, problems.x3d, problems.K)
        assert result.converged.all()
        rotation, translation = pose_errors_deg_m(result.R, result.t, problems.R, problems.t)
        assert rotation.max() < 1e-6
        assert translation.max() < 1e-8
        assert result.cost.max() < 1e-12


def cv2_iterative_errors(problems) -> tuple[np.ndarray, np.ndarray]:
    rotation, translation = [], []
    for b in range(problems.x2d.shape[0]):
        x3d = (problems.x3d if problems.x3d.ndim == 2 else problems.x3d[b]).numpy()
        ok, rvec, tvec = cv2.solvePnP(
            x3d, problems.x2d[b].numpy(), problems.K.numpy(), None, flags=cv2.SOLVEPNP_ITERATIVE
        )
        assert ok
        R = cv2.Rodrigues(rvec)[0]
        cos = (np.trace(R.T @ problems.R[b].numpy()) - 1.0) / 2.0
        rotation.append(math.degrees(math.acos(np.clip(cos, -1.0, 1.0))))
        translation.append(np.linalg.norm(tvec[:, 0] - problems.t[b].numpy()))
    return np.array(rotation), np.array(translation)


@pytest.mark.parametrize("count", [9, 20])
def test_accuracy_matches_opencv_iterative_under_1px_noise(count):
    problems = generic_problems(1500, count, noise_px=1.0, seed=2)
    result = solve_pnp(problems.x2d, problems.x3d, problems.K)
    rotation, translation = pose_errors_deg_m(result.R, result.t, problems.R, problems.t)
    cv2_rotation, cv2_translation = cv2_iterative_errors(problems)
    assert rotation.median().item() <= 1.01 * np.median(cv2_rotation)
    assert translation.median().item() <= 1.01 * np.median(cv2_translation)


def test_converges_on_well_posed_problems():
    for problems in (generic_problems(3000, 9, seed=3), uava_problems(3000, 9, seed=3)):
        result = solve_pnp(problems.x2d, problems.x3d, problems.K)
        assert result.converged.double().mean().item() >= 0.999, problems.name
        assert torch.isfinite(result.R).all()
        assert torch.isfinite(result.t).all()


def test_a_problem_gives_the_same_answer_alone_or_in_a_batch():
    problems = uava_problems(40, 9, seed=4)
    batched = solve_pnp(problems.x2d, problems.x3d, problems.K)
    for b in (0, 17, 39):
        alone = solve_pnp(problems.x2d[b : b + 1], problems.x3d, problems.K)
        torch.testing.assert_close(alone.R[0], batched.R[b], atol=1e-9, rtol=0)
        torch.testing.assert_close(alone.t[0], batched.t[b], atol=1e-9, rtol=0)


def test_float32_and_float64_agree():
    problems = uava_problems(100, 9, seed=5)
    double = solve_pnp(problems.x2d, problems.x3d, problems.K)
    single = solve_pnp(problems.x2d.float(), problems.x3d.float(), problems.K.float())
    assert single.R.dtype == torch.float32
    rotation, translation = pose_errors_deg_m(single.R.double(), single.t.double(), double.R, double.t)
    assert rotation.max() < 1e-3
    assert (translation / double.t.norm(dim=-1)).max() < 1e-5


def test_initial_pose_is_used_and_a_bad_one_is_ignored():
    problems = uava_problems(20, 9, seed=6)
    reference = solve_pnp(problems.x2d, problems.x3d, problems.K)
    tracked = solve_pnp(problems.x2d, problems.x3d, problems.K, init=(problems.R, problems.t))
    torch.testing.assert_close(tracked.R, reference.R, atol=1e-7, rtol=0)
    nan_init = (torch.full_like(problems.R, math.nan), problems.t)
    assert solve_pnp(problems.x2d, problems.x3d, problems.K, init=nan_init).converged.all()


def test_outliers_huber_and_weights():
    problems = uava_problems(200, 9, noise_px=0.3, seed=7)
    x2d = problems.x2d.clone()
    x2d[:, 3] += 40.0  # one gross outlier per sample
    plain = solve_pnp(x2d, problems.x3d, problems.K)
    robust = solve_pnp(x2d, problems.x3d, problems.K, huber=2.0)
    weights = torch.ones(200, 9, dtype=F64)
    weights[:, 3] = 0.0
    masked = solve_pnp(x2d, problems.x3d, problems.K, weights=weights)
    error = {
        name: pose_errors_deg_m(r.R, r.t, problems.R, problems.t)[1].median().item()
        for name, r in (("plain", plain), ("huber", robust), ("masked", masked))
    }
    assert error["huber"] < 0.5 * error["plain"]
    assert error["masked"] < 0.5 * error["huber"]


def test_multi_hypothesis_never_ends_at_a_higher_cost():
    problems = uava_problems(300, 9, noise_px=2.0, min_size_px=15, max_size_px=40, seed=8)
    single = solve_pnp(problems.x2d, problems.x3d, problems.K)
    multi = solve_pnp(problems.x2d, problems.x3d, problems.K, multi_hypothesis=True)
    assert (multi.cost <= single.cost + 1e-9).all()
    assert (multi.cost < single.cost - 1e-6).any(), "ambiguous small drones should have other minima"


def test_covariance_matches_the_spread_of_estimates():
    """Many noise draws of one problem: the predicted covariance matches the empirical one."""
    problems = uava_problems(1, 9, noise_px=0.0, min_size_px=120, max_size_px=120, seed=9)
    draws = 4000
    generator = torch.Generator().manual_seed(10)
    x2d = problems.x2d.expand(draws, 9, 2) + torch.randn(draws, 9, 2, generator=generator, dtype=F64)
    result = solve_pnp(x2d, problems.x3d, problems.K)
    assert result.converged.all()
    empirical = torch.cov((result.t - problems.t).T)
    predicted = result.covariance[:, :3, :3].mean(0)
    ratio = empirical.diagonal() / predicted.diagonal()
    assert ((ratio > 0.85) & (ratio < 1.15)).all(), ratio
    assert (result.covariance.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_structural_errors_raise():
    problems = uava_problems(2, 9)
    with pytest.raises(ValueError, match="at least 4 points"):
        solve_pnp(problems.x2d[:, :3], problems.x3d[:3], problems.K)
    with pytest.raises(ValueError, match="x2d must have shape"):
        solve_pnp(problems.x2d[0], problems.x3d, problems.K)
    with pytest.raises(ValueError, match="x3d must have shape"):
        solve_pnp(problems.x2d, problems.x3d[:8], problems.K)
    with pytest.raises(ValueError, match="focal length"):
        solve_pnp(problems.x2d, problems.x3d, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="weights must have shape"):
        solve_pnp(problems.x2d, problems.x3d, problems.K, weights=torch.ones(2, 9, 3, dtype=F64))


def test_bad_samples_are_flagged_without_nan_and_without_harming_the_batch():
    problems = uava_problems(6, 9, seed=11)
    x2d, x3d = problems.x2d.clone(), problems.x3d.expand(6, 9, 3).clone()
    weights = torch.ones(6, 9, dtype=F64)
    x2d[1, 2, 0] = math.nan  # non-finite keypoint
    x3d[2] = torch.linspace(0, 1, 9, dtype=F64)[:, None] * x3d.new_tensor([1.0, 2.0, 3.0])  # collinear model
    weights[3, 3:] = 0.0  # only 3 points left
    x2d[4] = x2d[4, :1].expand(9, 2)  # all keypoints on one pixel
    result = solve_pnp(x2d, x3d, problems.K, weights=weights)
    for tensor in (result.R, result.t, result.covariance):
        assert torch.isfinite(tensor).all()
    status = [PnPStatus(s) for s in result.status.tolist()]
    assert status[1] == PnPStatus.NON_FINITE_INPUT
    assert status[2] == PnPStatus.DEGENERATE_POINTS
    assert status[3] == PnPStatus.DEGENERATE_POINTS
    assert not result.converged[4] or result.cost[4] > 0
    assert result.converged[[0, 5]].all()
    clean = solve_pnp(problems.x2d[[0, 5]], problems.x3d, problems.K)
    torch.testing.assert_close(result.R[[0, 5]], clean.R, atol=1e-9, rtol=0)


def test_points_behind_the_camera_never_give_nan():
    problems = uava_problems(8, 9, seed=12)
    t_behind = problems.t * problems.t.new_tensor([1.0, 1.0, -1.0])
    x2d, _ = project_points(problems.x3d, problems.R, t_behind, problems.K)
    result = solve_pnp(x2d, problems.x3d, problems.K)
    assert torch.isfinite(result.R).all()
    assert torch.isfinite(result.t).all()
    _, depth = project_points(problems.x3d, result.R, result.t, problems.K)
    converged = result.converged
    assert (depth[converged] > 0).all(), "a converged pose must put the points in front of the camera"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    problems = uava_problems(256, 9, seed=13)
    cpu = solve_pnp(problems.x2d, problems.x3d, problems.K)
    gpu = solve_pnp(problems.x2d.cuda(), problems.x3d.cuda(), problems.K.cuda())
    assert gpu.R.device.type == "cuda"
    torch.testing.assert_close(gpu.R.cpu(), cpu.R, atol=1e-7, rtol=0)
    torch.testing.assert_close(gpu.t.cpu(), cpu.t, atol=1e-7, rtol=0)


def test_saddle_regions_are_left_quickly():
    """A float32 batch in which one problem started near a saddle and crawled for 50 Gauss-Newton steps."""
    problems = uava_problems(1024, 20, dtype=torch.float32, seed=1)
    result = solve_pnp(problems.x2d, problems.x3d, problems.K)
    assert result.converged.all()
    assert result.iterations <= 30


def test_converged_poses_are_at_the_optimum_to_the_tolerance():
    """Stopping early (quadratic-rate estimate) must not stop short of the optimum."""
    for problems in (uava_problems(512, 9, seed=8), generic_problems(512, 9, seed=8)):
        tight = solve_pnp(problems.x2d, problems.x3d, problems.K, tolerance=1e-14, max_iterations=100)
        result = solve_pnp(problems.x2d, problems.x3d, problems.K)  # tolerance 1e-10 for float64
        both = tight.converged & result.converged
        assert both.double().mean() > 0.999
        relative_t = (result.t - tight.t).norm(dim=-1) / (tight.t.norm(dim=-1) + 1.0)
        rotation = geodesic_angle(result.R, tight.R)
        assert relative_t[both].max() < 3e-9, problems.name  # measured 1.0e-9
        assert rotation[both].max() < 2e-8, problems.name  # radians; measured 5.9e-9


def test_newton_hessian_shifts_indefinite_and_skips_non_finite_samples():
    from drone_pose.pnp.solver import _newton_hessian

    H = torch.eye(6, dtype=F64).repeat(3, 1, 1)
    H[1, 0, 0] = math.nan
    H[2, 0, 0] = -2.0
    shifted, positive = _newton_hessian(H)
    assert positive.tolist() == [True, False, False]
    torch.testing.assert_close(shifted[0], H[0])
    assert torch.linalg.eigvalsh(shifted[2]).min() > 0, "a descent direction"
    assert shifted[2, 0, 0] == pytest.approx(1.0, rel=1e-6), "shifted by 1.5 x the negative eigenvalue"


def test_small_cpu_problems_run_on_one_thread_and_restore_the_thread_count():
    from drone_pose.pnp.solver import SERIAL_MAX_POINTS, serial_when_small

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with serial_when_small(torch.zeros(4, 9, 2)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with serial_when_small(torch.zeros(SERIAL_MAX_POINTS + 1, 2)):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), serial_when_small(torch.zeros(4, 9, 2)):
            raise RuntimeError("restored on errors too")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
