"""pnp_layer: implicit gradients against gradcheck and finite differences of the solver."""

from __future__ import annotations

import pytest
import torch

from drone_pose.bench.pnp_problems import generic_problems, model_points, uava_problems
from drone_pose.geometry.camera import PinholeCamera, project_points
from drone_pose.geometry.rotations import random_rotations
from drone_pose.pnp import pnp_layer, projection_loss, regression_loss, solve_pnp

F64 = torch.float64
TIGHT = {"tolerance": 1e-15, "max_iterations": 300}


def intrinsics(params: torch.Tensor) -> torch.Tensor:
    """K [3,3] from (fx, fy, cx, cy), so that gradcheck only perturbs real parameters."""
    fx, fy, cx, cy = params.unbind()
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack(
        (torch.stack((fx, zero, cx)), torch.stack((zero, fy, cy)), torch.stack((zero, zero, one)))
    )


@pytest.mark.parametrize("huber", [None, 3.0])
def test_exact_layer_passes_gradcheck(huber):
    problems = generic_problems(2, 6, noise_px=2.0, seed=1)
    generator = torch.Generator().manual_seed(2)
    inputs = (
        problems.x2d.clone().requires_grad_(),
        problems.x3d.clone().requires_grad_(),
        torch.tensor([800.0, 810.0, 320.0, 240.0], dtype=F64, requires_grad=True),
        (torch.rand(2, 6, 2, generator=generator, dtype=F64) + 0.5).requires_grad_(),
    )

    def layer(x2d, x3d, k, weights):
        result = pnp_layer(x2d, x3d, intrinsics(k), weights, grad="exact", huber=huber, **TIGHT)
        return result.R, result.t

    assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_x2d_only_fast_path_passes_gradcheck():
    problems = uava_problems(3, 9, noise_px=1.0, seed=3)
    x2d = problems.x2d.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: tuple(getattr(pnp_layer(a, problems.x3d, problems.K, **TIGHT), k) for k in ("R", "t")),
        (x2d,),
        eps=1e-6,
        atol=1e-5,
        rtol=1e-3,
    )


def far_and_near_drone_problems(batch: int, seed: int):
    """Drone keypoints at 2-30 m (down to ~3 px across at 30 m), 1 px noise, UAVA camera."""
    generator = torch.Generator().manual_seed(seed)
    x3d = model_points(9)
    K = PinholeCamera.uava().K(F64)
    depth = torch.linspace(2.0, 30.0, batch, dtype=F64)
    t = torch.stack(
        (
            0.1 * depth * (torch.rand(batch, generator=generator, dtype=F64) - 0.5),
            0.1 * depth * (torch.rand(batch, generator=generator, dtype=F64) - 0.5),
            depth,
        ),
        -1,
    )
    R = random_rotations(batch, generator)
    uv, _ = project_points(x3d, R, t, K)
    return uv + torch.randn(uv.shape, generator=generator, dtype=F64), x3d, K


def test_exact_gradient_matches_finite_differences_of_the_solver():
    """Directional derivatives of (R, t) along random x2d perturbations: < 0.5 % relative error."""
    x2d, x3d, K = far_and_near_drone_problems(12, seed=4)
    generator = torch.Generator().manual_seed(5)
    base = solve_pnp(x2d, x3d, K, **TIGHT)
    assert base.converged.all()
    for _ in range(3):
        direction = torch.randn(x2d.shape, generator=generator, dtype=F64)
        cotangent_R = torch.randn(12, 3, 3, generator=generator, dtype=F64)
        cotangent_t = torch.randn(12, 3, generator=generator, dtype=F64)
        x = x2d.clone().requires_grad_()
        result = pnp_layer(x, x3d, K, grad="exact", **TIGHT)
        per_sample = (result.R * cotangent_R).sum((-1, -2)) + (result.t * cotangent_t).sum(-1)
        per_sample.sum().backward()
        analytic = (x.grad * direction).sum((-1, -2))
        eps = 1e-5
        plus = solve_pnp(x2d + eps * direction, x3d, K, init=(base.R, base.t), **TIGHT)
        minus = solve_pnp(x2d - eps * direction, x3d, K, init=(base.R, base.t), **TIGHT)
        numeric = (
            ((plus.R - minus.R) * cotangent_R).sum((-1, -2)) + ((plus.t - minus.t) * cotangent_t).sum(-1)
        ) / (2 * eps)
        relative = (analytic - numeric).abs() / numeric.abs().clamp_min(1e-12)
        assert relative.max() < 5e-3, relative


def test_gauss_newton_gradient_is_close_but_not_exact():
    problems = uava_problems(64, 9, noise_px=1.0, seed=6)
    grads = {}
    for mode in ("exact", "gauss_newton"):
        x = problems.x2d.clone().requires_grad_()
        K = problems.K.clone().requires_grad_()  # forces the general (non fast-path) backward
        result = pnp_layer(x, problems.x3d, K, grad=mode)
        (result.t.sum() + result.R.sum()).backward()
        grads[mode] = K.grad
    difference = (grads["exact"] - grads["gauss_newton"]).norm() / grads["exact"].norm()
    assert 1e-6 < difference < 0.5


def test_non_converged_samples_get_zero_gradient():
    problems = uava_problems(3, 9, seed=7)
    x2d = problems.x2d.clone()
    x2d[1] = x2d[1, :1].expand(9, 2)  # degenerate: every keypoint on one pixel
    weights = torch.ones(3, 9, dtype=F64)
    weights[2, 3:] = 0.0  # only three points left
    x = x2d.requires_grad_()
    result = pnp_layer(x, problems.x3d, problems.K, weights)
    (result.R.sum() + result.t.sum()).backward()
    for b in range(3):
        if not result.converged[b]:
            assert (x.grad[b] == 0).all()
    assert not result.converged[2]
    assert torch.isfinite(x.grad).all()


def test_losses_by_hand_and_training_through_the_layer():
    problems = uava_problems(8, 9, noise_px=0.0, seed=8)
    target, _ = project_points(problems.x3d, problems.R, problems.t, problems.K)
    assert projection_loss(problems.R, problems.t, problems.x3d, problems.K, target).item() == pytest.approx(
        0.0, abs=1e-18
    )
    shifted = target + target.new_tensor([1.0, 0.0])
    assert regression_loss(shifted, problems.R, problems.t, problems.x3d, problems.K).item() == pytest.approx(
        9.0
    )
    # Gradient descent on noisy keypoints through the exact layer drives l_proj towards zero.
    keypoints = target + 3.0 * torch.randn(
        target.shape, generator=torch.Generator().manual_seed(9), dtype=F64
    )
    keypoints.requires_grad_()
    optimiser = torch.optim.Adam([keypoints], lr=0.2)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        result = pnp_layer(keypoints, problems.x3d, problems.K)
        loss = projection_loss(result.R, result.t, problems.x3d, problems.K, target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]
