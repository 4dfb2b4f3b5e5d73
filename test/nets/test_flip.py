"""Flip test: the mirror permutation of the drones' keypoints, exact grid alignment of the flipped
heatmaps, and an estimator that is mirror-equivariant with it (the shipped Tello network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drone_pose.data.dataset import ShardDataset
from drone_pose.data.generate import generate_dataset
from drone_pose.drones import load_drone
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.nets.flip import flip_averaged, mirror_permutation, validate_flip_test
from drone_pose.nets.heatmap_codec import decode_heatmaps

LEFT_RIGHT_SWAPPED = [0, 2, 1, 4, 3, 6, 5, 8, 7]  # centroid, then front-left/front-right, ...


@pytest.mark.parametrize("drone", ["m2ed", "tello"])
def test_the_built_in_drones_swap_left_and_right_keypoints_in_a_mirror(drone):
    model = load_drone(drone)
    permutation = mirror_permutation(model.keypoints)
    assert permutation == LEFT_RIGHT_SWAPPED
    names = model.keypoint_names
    assert all(
        names[j] == names[i].replace("left", "#").replace("right", "left").replace("#", "right")
        for i, j in enumerate(permutation)
    )


def test_keypoints_without_a_mirror_image_refuse_the_flip_test():
    points = load_drone("tello").keypoints.copy()
    points[1, 1] += 0.01  # front-left motor moved outwards: its mirror image is not a keypoint
    assert mirror_permutation(points) is None
    with pytest.raises(ValueError, match="mirror-symmetric"):
        validate_flip_test("zoom", points)
    assert validate_flip_test("off", points) is None
    with pytest.raises(ValueError, match="one of off, zoom, all"):
        validate_flip_test("sideways", load_drone("tello").keypoints)


def blob_image(x: float, y: float, width: int = 64, height: int = 48) -> torch.Tensor:
    """[1,3,H,W] a Gaussian blob (std 3 px) centred at the sub-pixel point (x, y)."""
    yy, xx = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    blob = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2))
    return blob.expand(1, 3, height, width).clone()


def pooled_heatmaps(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A stride-4 'network' [N,3,H,W] -> [N,K,H/4,W/4]: channel k is weights[k] x the pooled image."""
    return F.avg_pool2d(images[:, :1], 4) * weights.view(1, -1, 1, 1)


def test_flipped_heatmaps_line_up_with_the_original_grid_to_a_fraction_of_a_pixel():
    weights = torch.ones(9, dtype=torch.float64)
    images = torch.cat([blob_image(21.3, 17.8), blob_image(40.6, 30.1)])
    plain = pooled_heatmaps(images, weights)
    averaged = flip_averaged(lambda x: pooled_heatmaps(x, weights), LEFT_RIGHT_SWAPPED)(images)
    assert averaged.shape == plain.shape
    plain_xy, _ = decode_heatmaps(plain)
    averaged_xy, _ = decode_heatmaps(averaged)
    assert torch.allclose(averaged_xy, plain_xy, atol=1e-6)
    shifted = flip_averaged(lambda x: pooled_heatmaps(x.roll(1, -1), weights), LEFT_RIGHT_SWAPPED)(images)
    assert not torch.allclose(decode_heatmaps(shifted)[0], plain_xy, atol=1e-2)  # a 1 px slip shows


def test_the_mirrored_view_feeds_each_keypoint_from_its_mirror_channel():
    weights = torch.arange(1.0, 10.0, dtype=torch.float64)
    images = blob_image(30.0, 20.0)
    averaged = flip_averaged(lambda x: pooled_heatmaps(x, weights), LEFT_RIGHT_SWAPPED)(images)
    # the blob's pooled map is symmetric about x = 30 only approximately; compare channel scales at the peak
    plain = pooled_heatmaps(images, torch.ones(9, dtype=torch.float64))
    mirrored_plain = pooled_heatmaps(images.flip(-1), torch.ones(9, dtype=torch.float64)).flip(-1)
    expected = 0.5 * (
        weights.view(1, -1, 1, 1) * plain + weights[LEFT_RIGHT_SWAPPED].view(1, -1, 1, 1) * mirrored_plain
    )
    assert torch.allclose(averaged, expected)


@pytest.fixture(scope="module")
def tello_images(tmp_path_factory):
    """Four held-out-like Tello renderings: uint8 [4,H,W,3] and K [4,3,3]."""
    folder = tmp_path_factory.mktemp("tello")
    generate_dataset("tello", 4, folder, seed=2027, workers=1, fractions=(0, 0, 1), progress=False)
    samples = [ShardDataset(folder, "test")[i] for i in range(4)]
    images = np.stack([(s["image"].permute(1, 2, 0) * 255).round().byte().numpy() for s in samples])
    return images, np.stack([s["K"].double().numpy() for s in samples])


def mirrored(images: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images flipped left-right and their intrinsics (principal point mirrored)."""
    width = images.shape[2]
    K_mirror = K.copy()
    K_mirror[:, 0, 2] = width - 1 - K[:, 0, 2]
    return np.ascontiguousarray(images[:, :, ::-1]), K_mirror


def test_with_the_flip_test_on_every_pass_a_mirrored_image_gives_the_mirrored_pose(tello_images):
    """The flip test makes the estimator mirror-equivariant by construction: the mirrored image's
    keypoints are the mirrored keypoints, left and right swapped, and its pose the mirrored pose.
    Without it the shipped network's two answers differ."""
    images, K = tello_images
    width = images.shape[2]
    mirror_images, mirror_K = mirrored(images, K)
    gaps = {}
    for mode in ("all", "off"):
        estimator = PoseEstimator.from_checkpoint(drone="tello", device="cpu", warm_up=False, flip_test=mode)
        assert estimator.flip_test == mode
        direct = estimator.estimate(images, K)
        mirror = estimator.estimate(mirror_images, mirror_K)
        expected = direct.keypoints[:, LEFT_RIGHT_SWAPPED].clone()
        expected[..., 0] = width - 1 - expected[..., 0]
        gaps[mode] = float((mirror.keypoints - expected).norm(dim=-1).max())
        if mode == "all":
            flip_x = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
            assert torch.allclose(mirror.t, direct.t * flip_x, atol=1e-4)
            assert torch.equal(mirror.valid, direct.valid)
    assert gaps["all"] < 2e-3, gaps
    assert gaps["off"] > 10 * gaps["all"], gaps
