"""Heatmap decoding: sub-pixel recovery, border behaviour, shift equivariance, pixel conventions."""

from __future__ import annotations

import pytest
import torch

from drone_pose.geometry.camera import PinholeCamera, project, scale_intrinsics
from drone_pose.nets.heatmap_codec import decode_heatmaps, heatmap_to_image, image_to_heatmap

H, W = 60, 80


def gaussian_heatmaps(centres: torch.Tensor, sigma: float, peak: float = 1.0) -> torch.Tensor:
    """Heatmaps [B,K,H,W] with Gaussian peaks at centres [B,K,2] (x, y heatmap pixels)."""
    yy, xx = torch.meshgrid(
        torch.arange(H, dtype=centres.dtype), torch.arange(W, dtype=centres.dtype), indexing="ij"
    )
    d2 = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    return peak * torch.exp(-d2 / (2 * sigma**2))


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recovers_gaussian_centres_to_a_twentieth_of_a_pixel(sigma, dtype):
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(4, 400, 2, generator=generator, dtype=torch.float64) * torch.tensor(
        [W - 1.0, H - 1.0]
    )
    xy, confidence = decode_heatmaps(gaussian_heatmaps(centres, sigma).to(dtype))
    assert (xy.double() - centres).abs().max() < 0.05
    assert confidence.min() > 0.75


@pytest.mark.parametrize("corner", [(0.2, 0.3), (0.7, 58.6), (79.0, 1.4), (78.5, 57.9), (2.5, 30.2)])
def test_near_borders(corner):
    centre = torch.tensor([[corner]], dtype=torch.float64)
    xy, _ = decode_heatmaps(gaussian_heatmaps(centre, 2.0))
    assert (xy - centre).abs().max() < 0.05


def test_exactly_equivariant_to_integer_shifts():
    generator = torch.Generator().manual_seed(1)
    heatmaps = torch.rand(2, 9, H, W, generator=generator) ** 8  # arbitrary (non-Gaussian) peaked maps
    margin = 10  # keeps every decoding window inside the map before and after the shift
    heatmaps[..., :margin, :] = 0
    heatmaps[..., -margin:, :] = 0
    heatmaps[..., :margin] = 0
    heatmaps[..., -margin:] = 0
    xy, confidence = decode_heatmaps(heatmaps)
    shifted = torch.roll(heatmaps, shifts=(3, -5), dims=(-2, -1))
    xy_shifted, confidence_shifted = decode_heatmaps(shifted)
    torch.testing.assert_close(xy_shifted, xy + torch.tensor([-5.0, 3.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(confidence_shifted, confidence)


def test_peak_height_does_not_move_the_keypoint():
    centres = torch.tensor([[[30.3, 20.7], [10.6, 45.2]]], dtype=torch.float64)
    low, _ = decode_heatmaps(gaussian_heatmaps(centres, 2.0, peak=0.2))
    high, confidence = decode_heatmaps(gaussian_heatmaps(centres, 2.0, peak=1.0))
    torch.testing.assert_close(low, high)
    assert confidence.min() > 0.9


def test_decoding_is_differentiable():
    centres = torch.tensor([[[20.3, 15.6], [3.2, 40.4]]], dtype=torch.float64)
    heatmaps = gaussian_heatmaps(centres, 2.0).clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h: decode_heatmaps(h)[0], (heatmaps,), eps=1e-7, atol=1e-5, fast_mode=True
    )


def test_heatmap_and_image_pixels_follow_the_camera_convention():
    """A point's heatmap coordinate equals its projection with intrinsics scaled by 1/stride."""
    K = PinholeCamera.uava().K(torch.float64)
    point = torch.tensor([[[0.3, -0.2, 4.0], [-1.0, 0.7, 9.0]]], dtype=torch.float64)
    uv = project(point, K)
    for stride in (2.0, 4.0):
        torch.testing.assert_close(
            image_to_heatmap(uv, stride), project(point, scale_intrinsics(K, 1 / stride, 1 / stride))
        )
        torch.testing.assert_close(heatmap_to_image(image_to_heatmap(uv, stride), stride), uv)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        decode_heatmaps(torch.zeros(9, 60, 80))
