"""EPro-PnP: AMIS normalisation, the KL gradient (eq. 7-8), weight learning, derivative regularisation."""

from __future__ import annotations

import math

import torch

from drone_pose.bench.pnp_problems import uava_problems
from drone_pose.pnp import solve_pnp
from drone_pose.pnp.epro import (
    amis_samples,
    derivative_regularization_loss,
    epro_pnp_loss,
    monte_carlo_kl_loss,
)
from drone_pose.pnp.projection import broadcast_inputs, cost_derivatives

F64 = torch.float64


def test_monte_carlo_normaliser_matches_the_laplace_approximation():
    """For a near-Gaussian posterior, log of the integral of exp(-f) is the Laplace value.

    Laplace in (t, rotation vector): -f* + 3 log(2 pi) - 0.5 log|H|; on S^3 the quaternion measure is
    (1/8) of the rotation-vector measure near the mode and counts both q and -q: a factor 1/4.
    """
    problems = uava_problems(6, 9, noise_px=1.0, min_size_px=120, max_size_px=150, seed=1)
    weights = torch.ones(6, 9, 2, dtype=F64)
    estimates = torch.stack(
        [
            monte_carlo_kl_loss(
                problems.x2d,
                problems.x3d,
                problems.K,
                weights,
                problems.R,
                problems.t,
                amis_samples(
                    problems.x2d,
                    problems.x3d,
                    problems.K,
                    weights,
                    generator=torch.Generator().manual_seed(seed),
                ),
            )[2]
            for seed in range(4)
        ]
    ).mean(0)
    mode = solve_pnp(problems.x2d, problems.x3d, problems.K, weights)
    cost, _, _, hessian, _, _ = cost_derivatives(
        *broadcast_inputs(problems.x2d, problems.x3d, problems.K, weights), mode.R, mode.t, None, True
    )
    laplace = -cost + 3 * math.log(2 * math.pi) - 0.5 * torch.logdet(hessian) + math.log(0.25)
    assert (estimates - laplace).abs().max() < 0.15, estimates - laplace


def small_problem():
    problems = uava_problems(2, 9, noise_px=1.0, min_size_px=100, max_size_px=120, seed=2)
    weights = 0.5 + torch.rand(2, 9, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    samples = amis_samples(
        problems.x2d,
        problems.x3d,
        problems.K,
        weights,
        iterations=2,
        samples_per_iteration=16,
        generator=torch.Generator().manual_seed(4),
    )
    return problems, weights, samples


def test_kl_loss_with_fixed_samples_passes_gradcheck():
    problems, weights, samples = small_problem()
    inputs = (
        problems.x2d.clone().requires_grad_(),
        problems.x3d.expand(2, 9, 3).clone().requires_grad_(),
        weights.clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(
        lambda x2d, x3d, w: monte_carlo_kl_loss(x2d, x3d, problems.K, w, problems.R, problems.t, samples)[0],
        inputs,
        eps=1e-6,
        atol=1e-5,
        rtol=1e-3,
    )


def test_weight_gradient_balances_uncertainty_and_discrimination():
    """-dL/dw = w o (-r(y_gt)^2 + E_p[r(y)^2]) with the expectation over the weighted samples (eq. 8)."""
    problems, weights, samples = small_problem()
    w = weights.clone().requires_grad_()
    loss, _, _ = monte_carlo_kl_loss(
        problems.x2d, problems.x3d, problems.K, w, problems.R, problems.t, samples
    )
    loss.sum().backward()

    def unweighted(R, t):
        uv = (problems.x3d @ R.transpose(-1, -2) + t[..., None, :]) @ problems.K.T
        return uv[..., :2] / uv[..., 2:3]

    r_gt = unweighted(problems.R, problems.t) - problems.x2d
    r_samples = unweighted(samples.R, samples.t) - problems.x2d.unsqueeze(1)  # [B,S,N,2]
    f = 0.5 * ((weights.unsqueeze(1) * r_samples) ** 2).sum((-1, -2))
    importance = torch.softmax(-f - samples.log_q, dim=-1)
    expected = (importance[..., None, None] * r_samples**2).sum(1)
    torch.testing.assert_close(-w.grad, weights * (-(r_gt**2) + expected))


def test_learned_weights_drop_a_corrupted_keypoint():
    problems = uava_problems(8, 9, noise_px=0.3, min_size_px=80, max_size_px=150, seed=5)
    x2d = problems.x2d.clone()
    x2d[:, 4] += torch.randn(8, 2, generator=torch.Generator().manual_seed(6), dtype=F64) * 6.0
    log_weights = torch.zeros(9, 2, dtype=F64, requires_grad=True)
    optimiser = torch.optim.Adam([log_weights], lr=0.05)
    generator = torch.Generator().manual_seed(7)
    for _ in range(40):
        optimiser.zero_grad()
        weights = log_weights.exp().expand(8, 9, 2)
        loss = epro_pnp_loss(
            x2d,
            problems.x3d,
            problems.K,
            weights,
            problems.R,
            problems.t,
            iterations=2,
            samples_per_iteration=64,
            generator=generator,
        )
        loss.backward()
        optimiser.step()
    learned = log_weights.detach().mean(-1)
    others = torch.cat((learned[:4], learned[5:]))
    assert learned[4] < others.min() - 0.5, learned


def test_loss_is_finite_and_reproducible_for_a_seed():
    problems, weights, _ = small_problem()
    values = [
        epro_pnp_loss(
            problems.x2d,
            problems.x3d,
            problems.K,
            weights,
            problems.R,
            problems.t,
            generator=torch.Generator().manual_seed(8),
        ).item()
        for _ in range(2)
    ]
    assert math.isfinite(values[0])
    assert values[0] == values[1]


def test_derivative_regularization():
    problems = uava_problems(3, 9, noise_px=1.0, seed=9)
    weights = torch.ones(3, 9, 2, dtype=F64)
    mode = solve_pnp(problems.x2d, problems.x3d, problems.K, weights)
    x2d = problems.x2d.clone().requires_grad_()
    w = weights.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: derivative_regularization_loss(
            a, problems.x3d, problems.K, b, problems.R, problems.t, mode.R, mode.t
        ),
        (x2d, w),
        eps=1e-6,
        atol=1e-5,
        rtol=1e-3,
    )
    loss = derivative_regularization_loss(x2d, problems.x3d, problems.K, w, problems.R, problems.t)
    loss.backward()
    assert x2d.grad.abs().sum() > 0, "the Gauss-Newton step at the optimum carries a gradient"
    clean = uava_problems(3, 9, noise_px=0.0, seed=9)
    exact = derivative_regularization_loss(clean.x2d, clean.x3d, clean.K, None, clean.R, clean.t)
    assert exact.item() < 1e-9
