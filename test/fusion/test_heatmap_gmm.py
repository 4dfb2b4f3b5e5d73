"""GMM heatmap compression: weighted EM recovers known mixtures, M = 1 is the heatmap's moments,
batches equal single fits, degenerate heatmaps give a flagged stand-in, and the stable
log-likelihood agrees with the naive one where that is finite."""

from __future__ import annotations

import math

import pytest
import torch

from drone_pose.fusion.heatmap_gmm import (
    QUANTISATION_VARIANCE,
    HeatmapGMM,
    _em_step,
    _Grid,
    _initial_mixture,
    _sample_weights,
    fit_heatmap_gmm,
    gmm_log_likelihood,
)

HEIGHT, WIDTH = 60, 80


def grid(height: int = HEIGHT, width: int = WIDTH, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pixel centres [H,W,2] (x, y) in heatmap px."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij"
    )
    return torch.stack((xs, ys), dim=-1)


def render(weights: list[float], means: list[list[float]], variances: list[float]) -> torch.Tensor:
    """The density [H,W] of a spherical mixture sampled at the pixel centres (float64)."""
    gmm = HeatmapGMM(
        torch.tensor(weights, dtype=torch.float64),
        torch.tensor(means, dtype=torch.float64),
        torch.tensor(variances, dtype=torch.float64),
        torch.tensor(True),
    )
    return gmm_log_likelihood(gmm, grid()).exp()


def by_x(gmm: HeatmapGMM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, means and variances of one mixture with the components ordered by mean x."""
    order = gmm.means[..., 0].argsort()
    return gmm.weights[order], gmm.means[order], gmm.variances[order]


def weighted_moments(heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [2] and isotropic variance (per axis, px²) of max(heatmap, 0) as sample weights, two-pass."""
    p = heatmap.clamp_min(0.0)
    p = p / p.sum()
    points = grid(*heatmap.shape, dtype=heatmap.dtype)
    mean = (p[..., None] * points).sum((0, 1))
    variance = (p * ((points - mean) ** 2).sum(-1)).sum() / 2.0
    return mean, variance


TRUTH = {
    "weights": [0.5, 0.3, 0.2],
    "means": [[14.3, 20.6], [40.2, 35.7], [58.8, 24.1]],
    "variances": [4.0, 2.25, 6.25],
}


@pytest.mark.parametrize(("iterations", "tolerance"), [(10, 1e-4), (40, 1e-7)])
def test_a_hand_computed_mixture_is_recovered(iterations, tolerance):
    """The default 10 iterations, and 40 (converged: grid samples of Gaussians of std >= 1.5 px hold
    their moments to ~1e-9, Poisson summation)."""
    fit = fit_heatmap_gmm(render(**TRUTH), components=3, iterations=iterations)
    weights, means, variances = by_x(fit)
    assert bool(fit.valid)
    assert fit.means.dtype == torch.float64
    truth = {key: torch.tensor(value, dtype=torch.float64) for key, value in TRUTH.items()}
    torch.testing.assert_close(weights, truth["weights"], atol=tolerance, rtol=0)
    torch.testing.assert_close(means, truth["means"], atol=tolerance, rtol=0)
    torch.testing.assert_close(variances, truth["variances"], atol=tolerance, rtol=0)


def test_overlapping_components_are_separated():
    """Two components 3.5 std apart (their densities overlap; one merged peak per row at most)."""
    truth = {"weights": [0.6, 0.4], "means": [[35.0, 30.0], [42.0, 30.0]], "variances": [4.0, 4.0]}
    fit = fit_heatmap_gmm(render(**truth).float(), components=2, iterations=40)
    weights, means, variances = by_x(fit)
    assert fit.means.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor(truth["weights"]), atol=2e-3, rtol=0)
    torch.testing.assert_close(means, torch.tensor(truth["means"]), atol=2e-2, rtol=0)
    torch.testing.assert_close(variances, torch.tensor(truth["variances"]), atol=2e-2, rtol=0)


def textbook_em_step(
    p: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted EM on every pixel and component at once: p [H,W] (sum 1); weights [M], means [M,2],
    variances [M] -> the next ones (the paper's supplementary 8.2, per-axis variance, 1/12 floor)."""
    points, p = grid().reshape(-1, 1, 2), p.reshape(-1, 1)
    log_density = weights.log() - torch.log(2 * math.pi * variances)
    log_density = log_density - ((points - means) ** 2).sum(-1) / (2 * variances)
    r = p * torch.softmax(log_density, dim=-1)  # [P,M]
    mass = r.sum(0)
    means = (r[..., None] * points).sum(0) / mass[:, None]
    spread = (r * ((points - means) ** 2).sum(-1)).sum(0) / mass / 2
    return mass / mass.sum(), means, spread.clamp_min(QUANTISATION_VARIANCE)


def test_the_factorised_e_step_is_weighted_em():
    """From the same start the fit is textbook weighted EM, step for step."""
    heatmap = render(**TRUTH)
    iterations = 4
    fit = fit_heatmap_gmm(heatmap, components=3, iterations=iterations)
    p, _ = _sample_weights(heatmap[None], 0.0)
    weights, means, variances = (t[0] for t in _initial_mixture(p, 3, QUANTISATION_VARIANCE))
    for _ in range(iterations):
        weights, means, variances = textbook_em_step(p[0], weights, means, variances)
    torch.testing.assert_close(fit.weights, weights, atol=1e-12, rtol=0)
    torch.testing.assert_close(fit.means, means, atol=1e-10, rtol=0)
    torch.testing.assert_close(fit.variances, variances, atol=1e-10, rtol=0)


def test_one_em_step_with_a_background_is_weighted_em():
    """A noisy background everywhere: still textbook EM while no pixel is beyond the E-step's range
    bound (e^-300 per axis in float64) from every component."""
    generator = torch.Generator().manual_seed(3)
    heatmap = render(**TRUTH) + 1e-3 * torch.rand(HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    p, _ = _sample_weights(heatmap[None], 0.0)
    state = (
        torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64),
        torch.tensor([[[15.0, 20.0], [40.0, 35.0], [60.0, 25.0]]], dtype=torch.float64),
        torch.tensor([[9.0, 4.0, 16.0]], dtype=torch.float64),
    )
    grid_of = _Grid.of(HEIGHT, WIDTH, torch.float64, p.device)
    ours = _em_step(p, grid_of, *state, QUANTISATION_VARIANCE)
    textbook = textbook_em_step(p[0], *(t[0] for t in state))
    for mine, theirs in zip(ours, textbook, strict=True):
        torch.testing.assert_close(mine[0], theirs, atol=1e-11, rtol=0)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_one_component_is_the_heatmaps_moments(dtype, tolerance):
    generator = torch.Generator().manual_seed(1)
    heatmap = torch.rand(HEIGHT, WIDTH, generator=generator, dtype=torch.float64) - 0.3  # clamped below 0
    heatmap = heatmap + 5.0 * render([1.0], [[20.0, 45.0]], [9.0])
    mean, variance = weighted_moments(heatmap)
    fit = fit_heatmap_gmm(heatmap.to(dtype), components=1)
    assert fit.weights.item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(fit.means[0].double(), mean, atol=tolerance * 100, rtol=0)
    torch.testing.assert_close(fit.variances[0].double(), variance, rtol=tolerance, atol=0)
    torch.testing.assert_close(fit.covariance().double(), variance * torch.eye(2, dtype=torch.float64),
                               rtol=tolerance, atol=tolerance)  # fmt: skip


def test_a_batch_equals_its_items_one_by_one():
    generator = torch.Generator().manual_seed(2)
    heatmaps = torch.rand(2, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64) * 0.05
    for index, (x, y) in enumerate([(10, 10), (30, 50), (70, 20), (40, 30), (5, 55), (60, 40)]):
        heatmaps.view(6, HEIGHT, WIDTH)[index] += render([1.0], [[x + 0.3, y - 0.2]], [3.0 + index]) * 20
    heatmaps[1, 2] = 0.0  # an invalid heatmap in the batch leaves the others alone
    together = fit_heatmap_gmm(heatmaps, components=4)
    assert together.weights.shape == (2, 3, 4)
    assert together.means.shape == (2, 3, 4, 2)
    assert together.variances.shape == (2, 3, 4)
    assert together.valid.tolist() == [[True, True, True], [True, True, False]]
    for b in range(2):
        for k in range(3):
            alone = fit_heatmap_gmm(heatmaps[b, k], components=4)
            torch.testing.assert_close(together.weights[b, k], alone.weights, atol=1e-12, rtol=0)
            torch.testing.assert_close(together.means[b, k], alone.means, atol=1e-10, rtol=0)
            torch.testing.assert_close(together.variances[b, k], alone.variances, atol=1e-10, rtol=0)


def test_the_variance_floor_holds():
    delta = torch.zeros(HEIGHT, WIDTH)
    delta[12, 34] = 1.0
    for components in (1, 2, 4):
        fit = fit_heatmap_gmm(delta, components)
        assert bool(fit.valid)
        assert torch.allclose(fit.mean(), torch.tensor([34.0, 12.0]))
        assert (fit.variances >= QUANTISATION_VARIANCE).all()
    one = fit_heatmap_gmm(delta, 1)
    assert one.variances.item() == pytest.approx(1.0 / 12.0)
    generator = torch.Generator().manual_seed(4)
    noisy = torch.rand(8, HEIGHT, WIDTH, generator=generator) ** 8
    assert (fit_heatmap_gmm(noisy, 4, variance_floor=0.5).variances >= 0.5).all()


@pytest.mark.parametrize("bad", ["zeros", "negative", "nan", "inf"])
def test_a_degenerate_heatmap_gives_the_flagged_stand_in(bad):
    heatmap = render(**TRUTH).float()
    if bad == "zeros":
        heatmap.zero_()
    elif bad == "negative":
        heatmap = -heatmap
    else:
        heatmap[20, 30] = float(bad)
    fit = fit_heatmap_gmm(heatmap, components=3)
    assert not bool(fit.valid)
    for tensor in (fit.weights, fit.means, fit.variances, fit.covariance()):
        assert torch.isfinite(tensor).all()
    torch.testing.assert_close(fit.weights, torch.full((3,), 1.0 / 3.0))
    torch.testing.assert_close(fit.means, torch.tensor([[39.5, 29.5]]).expand(3, 2))
    grid_variance = ((WIDTH**2 - 1) / 12.0 + (HEIGHT**2 - 1) / 12.0) / 2.0
    torch.testing.assert_close(fit.variances, torch.full((3,), grid_variance))
    assert torch.isfinite(gmm_log_likelihood(fit, torch.tensor([0.0, 0.0]))).all()


def test_fewer_maxima_than_components_still_fit():
    """A single Gaussian fitted with 4 components: the mixture keeps its moments."""
    heatmap = render([1.0], [[40.4, 29.7]], [5.0])
    fit = fit_heatmap_gmm(heatmap, components=4)
    mean, variance = weighted_moments(heatmap)
    # each M-step keeps the weighted mean and the total second moment (not its split between axes)
    torch.testing.assert_close(fit.mean(), mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(fit.covariance().trace() / 2, variance, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        fit.covariance(), variance * torch.eye(2, dtype=torch.float64), atol=0.05, rtol=0
    )
    assert len({tuple(m) for m in fit.means.tolist()}) == 4  # distinct starts stay distinct


def test_half_precision_heatmaps_fit_in_float32():
    fit = fit_heatmap_gmm(render(**TRUTH).half(), components=3)
    assert fit.weights.dtype == torch.float32
    assert torch.isfinite(fit.variances).all()


def test_log_likelihood_equals_the_naive_sum_and_stays_finite_beyond_it():
    gmm = HeatmapGMM(
        torch.tensor([0.7, 0.3, 0.0]),
        torch.tensor([[10.0, 12.0], [30.0, 40.0], [0.0, 0.0]]),
        torch.tensor([2.0, 0.5, 1.0]),
        torch.tensor(True),
    )
    near = torch.tensor([[10.5, 11.0], [29.0, 41.0], [20.0, 25.0]])
    naive = (
        gmm.weights
        / (2 * math.pi * gmm.variances)
        * torch.exp(-((near[:, None] - gmm.means) ** 2).sum(-1) / (2 * gmm.variances))
    ).sum(-1)
    torch.testing.assert_close(gmm_log_likelihood(gmm, near), naive.log(), rtol=1e-5, atol=1e-5)
    far = torch.tensor([400.0, -300.0])  # every density underflows float32 (and float64)
    naive_far = (gmm.weights * torch.exp(-((far - gmm.means) ** 2).sum(-1) / (2 * gmm.variances))).sum()
    assert naive_far == 0.0
    stable = gmm_log_likelihood(gmm, far)
    assert torch.isfinite(stable)
    # far away the broadest component dominates: its own log-density
    own = math.log(0.7 / (2 * math.pi * 2.0)) - ((390.0**2 + 312.0**2) / (2 * 2.0))
    assert stable.item() == pytest.approx(own, rel=1e-6)


def test_log_likelihood_broadcasts_points_over_the_batch():
    fit = fit_heatmap_gmm(torch.stack([render(**TRUTH), render([1.0], [[5.0, 5.0]], [2.0])]), 3)
    points = torch.tensor([[[14.0, 20.0]], [[5.0, 6.0]]]).expand(2, 5, 2)  # [2,5,2]
    batched = HeatmapGMM(fit.weights[:, None], fit.means[:, None], fit.variances[:, None], fit.valid)
    assert gmm_log_likelihood(batched, points).shape == (2, 5)


def test_log_likelihood_gradient_with_respect_to_the_points():
    gmm = fit_heatmap_gmm(render(**TRUTH), components=3)
    points = torch.tensor([[14.0, 21.0], [25.0, 30.0], [60.0, 14.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gmm_log_likelihood(gmm, x), (points,))
    # and the refiner's use: descending the negative log-likelihood reaches a component's mean
    x = torch.tensor([37.0, 33.0], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.SGD([x], lr=1.0)
    for _ in range(200):
        optimiser.zero_grad()
        (-gmm_log_likelihood(gmm, x)).backward()
        optimiser.step()
    assert torch.allclose(x.detach(), torch.tensor([40.2, 35.7], dtype=torch.float64), atol=1e-3)


def test_image_pixels_and_covariance():
    gmm = HeatmapGMM(
        torch.tensor([0.25, 0.75]),
        torch.tensor([[10.0, 20.0], [14.0, 20.0]]),
        torch.tensor([1.0, 2.0]),
        torch.tensor(True),
    )
    # hand-computed: mean x = 13, offsets -3 and +1 -> x spread 0.25*9 + 0.75*1 = 3; isotropic 1.75
    torch.testing.assert_close(gmm.mean(), torch.tensor([13.0, 20.0]))
    torch.testing.assert_close(gmm.covariance(), torch.tensor([[4.75, 0.0], [0.0, 1.75]]))
    image = gmm.to_image(4.0)
    torch.testing.assert_close(image.means, 4.0 * (gmm.means + 0.5) - 0.5)
    torch.testing.assert_close(image.variances, 16.0 * gmm.variances)
    torch.testing.assert_close(image.covariance(), 16.0 * gmm.covariance())
    torch.testing.assert_close(image.mean(), gmm.mean(4.0))
    per_axis = gmm.covariance(torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(per_axis, torch.tensor([[4.75 * 16, 0.0], [0.0, 1.75 * 9]]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"components": 0}, "components"),
        ({"components": 2, "iterations": -1}, "iterations"),
        ({"components": 2, "variance_floor": 0.0}, "variance_floor"),
        ({"components": 2, "relative_threshold": 1.0}, "relative_threshold"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_heatmap_gmm(torch.zeros(HEIGHT, WIDTH), **kwargs)


def test_a_relative_threshold_drops_the_background():
    heatmap = render([1.0], [[30.0, 30.0]], [4.0])
    heatmap = heatmap / heatmap.max() + 0.02  # a flat background 2 % of the peak
    loose = fit_heatmap_gmm(heatmap, 1)
    strict = fit_heatmap_gmm(heatmap, 1, relative_threshold=0.05)
    assert loose.variances.item() > 50.0  # the background's spread dominates
    assert strict.variances.item() == pytest.approx(4.0, rel=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(5)
    heatmaps = torch.rand(4, 9, HEIGHT, WIDTH, generator=generator) * 0.05
    heatmaps += render(**TRUTH).float()
    heatmaps[0, 0] = float("nan")
    for components in (1, 2, 3, 4):
        cpu = fit_heatmap_gmm(heatmaps, components)
        gpu = fit_heatmap_gmm(heatmaps.cuda(), components)
        assert gpu.means.device.type == "cuda"
        assert torch.equal(gpu.valid.cpu(), cpu.valid)
        torch.testing.assert_close(gpu.weights.cpu(), cpu.weights, atol=1e-4, rtol=0)
        torch.testing.assert_close(gpu.means.cpu(), cpu.means, atol=1e-3, rtol=0)
        torch.testing.assert_close(gpu.variances.cpu(), cpu.variances, atol=1e-3, rtol=1e-4)
        points = torch.tensor([14.0, 20.0])
        torch.testing.assert_close(
            gmm_log_likelihood(gpu, points.cuda()).cpu(),
            gmm_log_likelihood(cpu, points),
            atol=1e-3,
            rtol=1e-4,
        )
