"""The soft silhouette rasterizer: exact gradients, agreement with the hard rasterizer, batching."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from drone_pose.data.rasterize import rasterize
from drone_pose.drones.loading import load_drone
from drone_pose.render.image_window import ImageWindow, SilhouetteMap
from drone_pose.render.soft_rasterizer import render_silhouette

K_IMAGE = [[252.7, 0.0, 160.0], [0.0, 252.7, 120.0], [0.0, 0.0, 1.0]]


def _pose(rotvec: list[float], t: list[float], dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return roma.rotvec_to_rotmat(torch.tensor([rotvec], dtype=dtype)), torch.tensor([t], dtype=dtype)


def _whole_image(dtype=torch.float64) -> ImageWindow:
    return ImageWindow(torch.zeros(1, 2, dtype=dtype), torch.ones(1, dtype=dtype), 320, 240)


@pytest.mark.parametrize("drone_name", ["m2ed", "tello"])
@pytest.mark.parametrize("cull", [False, True])
def test_sharp_silhouette_matches_the_hard_rasterizer(drone_name: str, cull: bool) -> None:
    drone = load_drone(drone_name)
    vertices, faces = torch.tensor(drone.vertices), torch.tensor(drone.faces)
    K = torch.tensor(K_IMAGE, dtype=torch.float64)
    for rotvec, t in (([0.3, -0.5, 0.2], [0.05, -0.02, 1.2]), ([2.0, 0.4, -1.0], [-0.1, 0.05, 1.5])):
        R, translation = _pose(rotvec, t)
        camera = (vertices @ R[0].T + translation[0]).numpy()
        hard = rasterize(camera, drone.faces, K.numpy(), 320, 240).mask
        soft = render_silhouette(vertices, faces, R, translation, K, _whole_image(), 64.0, cull)[0].numpy()
        assert soft.min() >= 0.0
        assert soft.max() <= 1.0
        binary = soft > 0.5
        iou = (binary & hard).sum() / (binary | hard).sum()
        assert hard.sum() > 100
        assert iou > 0.98, (drone_name, rotvec, iou)


def test_gradients_match_finite_differences() -> None:
    """gradcheck in float64 on the pose (rotation vector, translation) and the focal length, through
    a scalar of the silhouette (a fixed random weighting of its pixels), on a window."""
    drone = load_drone("m2ed")
    vertices, faces = torch.tensor(drone.vertices), torch.tensor(drone.faces)
    box = torch.tensor([[110.0, 60.0, 220.0, 160.0]], dtype=torch.float64)
    window = ImageWindow.around_box(box, 24)
    weights = torch.rand(1, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def weighted_silhouette(rotvec: torch.Tensor, t: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
        K = torch.zeros(1, 3, 3, dtype=torch.float64)
        K[0, 0, 0] = focal
        K[0, 1, 1] = focal
        K[0, 0, 2], K[0, 1, 2], K[0, 2, 2] = 160.0, 120.0, 1.0
        R = roma.rotvec_to_rotmat(rotvec)
        # cutoff 40: the neglected memberships (< 1e-17) cannot make the finite differences jump
        silhouette = render_silhouette(
            vertices, faces, R, t, K, window, 0.7, cull_back_faces=True, cutoff=40.0
        )
        return (silhouette * weights).sum()

    rotvec = torch.tensor([[0.3, -0.5, 0.2]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.05, -0.02, 1.2]], dtype=torch.float64, requires_grad=True)
    focal = torch.tensor(252.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(weighted_silhouette, (rotvec, t, focal), eps=1e-6, atol=1e-6, rtol=1e-4)
    gradients = torch.autograd.grad(weighted_silhouette(rotvec, t, focal), (rotvec, t))
    assert all(g.abs().sum() > 0 for g in gradients)


def test_a_batch_renders_each_pose_as_alone() -> None:
    drone = load_drone("tello")
    vertices, faces = torch.tensor(drone.vertices, dtype=torch.float32), torch.tensor(drone.faces)
    rotvecs = torch.tensor([[0.3, -0.5, 0.2], [1.5, 0.2, 0.1], [-0.4, 2.0, 0.3]])
    t = torch.tensor([[0.05, -0.02, 1.2], [-0.1, 0.05, 0.8], [0.0, 0.0, 2.0]])
    R = roma.rotvec_to_rotmat(rotvecs)
    K = torch.tensor(K_IMAGE)
    centres = (t @ K.T)[:, :2] / t[:, 2:]
    window = ImageWindow.around_box(torch.cat((centres - 40, centres + 40), -1), 64)
    together = render_silhouette(vertices, faces, R, t, K, window, 3.0, True)
    for i in range(3):
        one = ImageWindow(window.origin[i : i + 1], window.pixel_size[i : i + 1], 64, 64)
        alone = render_silhouette(vertices, faces, R[i : i + 1], t[i : i + 1], K, one, 3.0, True)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=0)
    assert (together.flatten(1).amax(1) > 0.9).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_renders_what_the_cpu_renders() -> None:
    drone = load_drone("m2ed")
    vertices, faces = torch.tensor(drone.vertices), torch.tensor(drone.faces)
    R, t = _pose([0.3, -0.5, 0.2], [0.05, -0.02, 1.2])
    K = torch.tensor(K_IMAGE, dtype=torch.float64)
    window = ImageWindow.around_box(torch.tensor([[110.0, 60.0, 220.0, 160.0]], dtype=torch.float64), 64)
    cpu = render_silhouette(vertices, faces, R, t, K, window, 2.0, True)
    moved = ImageWindow(window.origin.cuda(), window.pixel_size.cuda(), 64, 64)
    cuda = render_silhouette(vertices.cuda(), faces.cuda(), R.cuda(), t.cuda(), K.cuda(), moved, 2.0, True)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-9, rtol=0)


def test_a_silhouette_map_resamples_onto_a_window() -> None:
    """A map at stride 4 (heatmap convention) read back at image resolution lands on the same pixels."""
    mask = np.zeros((240, 320), dtype=bool)
    mask[100:140, 150:210] = True
    coarse = torch.from_numpy(mask.reshape(60, 4, 80, 4).mean((1, 3))).float()[None]
    silhouette = SilhouetteMap(coarse, ImageWindow.heatmap(1, 80, 60, 4.0))
    back = silhouette.resample(_whole_image(torch.float32))[0].numpy() > 0.5
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.95
    window = ImageWindow.around_box(torch.tensor([[150.0, 100.0, 209.0, 139.0]]), 32)
    inside = silhouette.resample(window)[0]
    assert inside[16, 16] > 0.99
    assert inside[0, 0] < 0.01


def test_resampling_area_averages_along_each_axis_with_per_axis_pixel_sizes() -> None:
    """A window whose pixels span 4 x 2 image pixels (pixel size per axis [B,2]) reads a full-resolution
    map as the average over each window pixel (a 2-pixel tent along y from the bilinear sub-samples);
    a per-axis size with equal axes reads exactly what the single size reads."""
    mask = torch.zeros(240, 320)
    mask[100:140, 148:212] = 1.0
    image_grid = ImageWindow(torch.zeros(1, 2), torch.ones(1, 2), 320, 240)
    silhouette = SilhouetteMap(mask[None], image_grid)
    window = ImageWindow(torch.tensor([[1.5, 0.5]]), torch.tensor([[4.0, 2.0]]), 80, 120)
    expected = mask.reshape(120, 2, 80, 4).mean((1, 3))
    resampled = silhouette.resample(window)[0]
    assert resampled.shape == (120, 80)
    assert float((resampled - expected).abs().max()) < 0.07
    assert torch.equal(resampled > 0.5, expected > 0.5)
    square = ImageWindow(torch.tensor([[1.5, 1.5]]), torch.tensor([4.0]), 80, 60)
    square_xy = ImageWindow(square.origin, torch.tensor([[4.0, 4.0]]), 80, 60)
    torch.testing.assert_close(silhouette.resample(square_xy), silhouette.resample(square))
