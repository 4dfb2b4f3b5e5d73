"""Pose covariance consistency: chi-square constants, Mahalanobis distances, fitted variance scales."""

from __future__ import annotations

import math

import pytest
import roma
import torch

from drone_pose.geometry.pose_covariance import (
    CHI2_95_6DOF,
    CHI2_MEDIAN,
    CovarianceScales,
    covariance_consistency,
    fit_covariance_scales,
    mahalanobis_squared,
    pose_error_vectors,
)


def test_chi_square_constants_are_the_quantiles():
    def cdf3(x):
        return math.erf(math.sqrt(x / 2)) - math.sqrt(2 * x / math.pi) * math.exp(-x / 2)

    def cdf6(x):
        return 1 - math.exp(-x / 2) * (1 + x / 2 + x * x / 8)

    assert cdf3(CHI2_MEDIAN[3]) == pytest.approx(0.5, abs=1e-6)
    assert cdf6(CHI2_MEDIAN[6]) == pytest.approx(0.5, abs=1e-6)
    assert cdf6(CHI2_95_6DOF) == pytest.approx(0.95, abs=1e-6)


def test_error_vectors_are_translation_then_left_rotation_vector():
    generator = torch.Generator().manual_seed(0)
    R_true = roma.random_rotmat(5, generator=generator, dtype=torch.float64)
    delta = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 0.1
    t_true = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    shift = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 0.01
    errors = pose_error_vectors(roma.rotvec_to_rotmat(delta) @ R_true, t_true + shift, R_true, t_true)
    torch.testing.assert_close(errors, torch.cat([shift, delta], 1))


def _random_covariances(count: int, generator: torch.Generator) -> torch.Tensor:
    """SPD [count,6,6] with block scales like a pose's (cm^2 translations, mrad^2 rotations)."""
    A = torch.randn(count, 6, 6, generator=generator, dtype=torch.float64)
    spd = A @ A.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    units = torch.tensor([1e-2] * 3 + [1e-3] * 3, dtype=torch.float64)
    size = torch.exp(torch.randn(count, generator=generator, dtype=torch.float64))  # per-pose scale
    return spd * units[:, None] * units[None, :] * size[:, None, None]


def test_fitted_scales_recover_an_overconfident_covariance():
    generator = torch.Generator().manual_seed(3)
    reported = _random_covariances(4000, generator)
    # true errors: translation variance 4x, rotation 0.25x what is reported
    truth = CovarianceScales(translation=4.0, rotation=0.25).apply(reported)
    noise = torch.randn(4000, 6, 1, generator=generator, dtype=torch.float64)
    errors = (torch.linalg.cholesky(truth) @ noise).squeeze(-1)

    scales = fit_covariance_scales(errors, reported)
    assert scales.translation == pytest.approx(4.0, rel=0.1)
    assert scales.rotation == pytest.approx(0.25, rel=0.1)
    assert scales.samples == 4000
    before = covariance_consistency(errors, reported)
    after = covariance_consistency(errors, scales.apply(reported))
    assert not 0.8 < before["covariance_ratio"] < 1.25
    assert before["covariance_cover95"] < 85.0
    assert after["covariance_ratio"] == pytest.approx(1.0, abs=0.1)
    assert after["covariance_cover95"] == pytest.approx(95.0, abs=1.5)


def test_unusable_covariances_are_left_out_of_the_fit_and_count_as_outside():
    generator = torch.Generator().manual_seed(4)
    reported = _random_covariances(200, generator)
    errors = (
        torch.linalg.cholesky(reported) @ torch.randn(200, 6, 1, generator=generator, dtype=torch.float64)
    )[..., 0]
    reported[:50] = 0.0  # the solver's singular-problem report
    reported[50, 0, 0] = math.nan
    squared = mahalanobis_squared(errors, reported)
    assert torch.isnan(squared[:51]).all()
    assert torch.isfinite(squared[51:]).all()
    assert fit_covariance_scales(errors, reported).samples == 149
    assert covariance_consistency(errors, reported)["covariance_cover95"] < 100 * 149 / 200 + 1e-9
    assert fit_covariance_scales(errors[:50], reported[:50]) == CovarianceScales()


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "2"])
def test_scales_must_be_positive_numbers(bad):
    with pytest.raises(ValueError, match="translation scale"):
        CovarianceScales(translation=bad)


def test_scales_divided_by_the_revealed_variance_never_fall_below_one():
    scales = CovarianceScales(translation=4.0, rotation=2.0)
    covariance = torch.eye(6, dtype=torch.float64).expand(3, 6, 6)
    revealed = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    scaled = scales.apply(covariance, revealed).diagonal(dim1=-2, dim2=-1)
    expected = torch.tensor(
        [[4.0] * 3 + [2.0] * 3, [2.0] * 3 + [1.0] * 3, [4.0] * 3 + [2.0] * 3], dtype=torch.float64
    )  # a ratio below 1 reveals nothing
    assert torch.allclose(scaled, expected)
    assert torch.equal(scales.apply(covariance, torch.ones(3, dtype=torch.float64)), scales.apply(covariance))
