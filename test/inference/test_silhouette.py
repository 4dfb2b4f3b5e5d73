"""The estimator's silhouettes: none without the mask head, and placed in the original image's
pixels through the resize to the network input, the zoomed second pass and the flip test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drone_pose.drones import load_drone
from drone_pose.inference.checkpoint import make_checkpoint, save_checkpoint
from drone_pose.inference.estimator import PoseEstimate, PoseEstimator
from drone_pose.nets.build import build_network
from drone_pose.nets.mask_head import MaskHead
from drone_pose.nets.predictor import IMAGENET_MEAN, IMAGENET_STD
from drone_pose.nets.silhouette import on_image, silhouette_iou
from drone_pose.nets.zoom import ZoomSettings

from ..tiny_models import TINY_NET

RED = 0  # the stand-in network reads the red channel


class SilhouetteStandIn(nn.Module):
    """A mask-head network stand-in: at stride 4 it sees the red channel area-averaged; all nine
    heatmaps are that map (their peak is the red blob's middle) and the silhouette logits say "drone"
    where more than half of a heatmap pixel is red."""

    def __init__(self) -> None:
        super().__init__()
        self.mask_head = MaskHead(1, 1)  # marks the network as having the head (unused)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        red = images[:, RED : RED + 1] * IMAGENET_STD[RED] + IMAGENET_MEAN[RED]  # back to [0, 1]
        height, width = images.shape[-2:]
        padded = F.pad(red, (0, (-width) % 4, 0, (-height) % 4))
        coverage = F.avg_pool2d(padded, 4)
        heatmaps = F.avg_pool2d(coverage, 5, stride=1, padding=2).expand(-1, 9, -1, -1)
        return [torch.cat((heatmaps, 40.0 * (coverage - 0.5)), dim=1)]


def red_box(width: int, height: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, torch.Tensor]:
    """A uint8 RGB image [1,H,W,3] with a red rectangle (x0, y0, x1, y1 exclusive) and its mask."""
    image = np.zeros((1, height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    image[0, y0:y1, x0:x1, RED] = 255
    mask = torch.zeros(1, height, width)
    mask[0, y0:y1, x0:x1] = 1.0
    return image, mask


def centroid(weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean pixel (x, y) of maps [B,H,W]."""
    ys, xs = torch.meshgrid(
        torch.arange(weights.shape[-2], dtype=torch.float64),
        torch.arange(weights.shape[-1], dtype=torch.float64),
        indexing="ij",
    )
    w = weights.double()
    total = w.sum((-1, -2))
    return torch.stack(((w * xs).sum((-1, -2)) / total, (w * ys).sum((-1, -2)) / total), -1)


def stand_in_estimator(**options) -> PoseEstimator:
    return PoseEstimator(
        SilhouetteStandIn(), load_drone("m2ed").keypoints, (320, 240), device="cpu", warm_up=False, **options
    )


K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 180.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    ("zoom", "flip_test", "box"),
    [
        (None, "off", (300, 150, 364, 198)),  # one pass, resized 640x360 -> 320x240 (x 1/2, y 2/3)
        (ZoomSettings(window=(192, 160)), "zoom", (101, 211, 125, 229)),  # a small drone, zoomed
        (ZoomSettings(window=(192, 160)), "all", (452, 40, 500, 76)),
    ],
)
def test_the_silhouette_lies_on_the_drone_in_the_original_image(zoom, flip_test, box):
    image, mask = red_box(640, 360, box)
    estimator = stand_in_estimator(zoom=zoom, flip_test=flip_test)
    result = estimator.estimate(image, K)
    assert result.silhouette is not None
    assert bool(result.zoomed[0]) == (zoom is not None)
    if zoom is not None:  # the window's map is finer than the first pass's (8 x 6 image px per pixel)
        assert float(result.silhouette.grid.pixel_size_xy.max()) < 3.0
    probability = on_image(result.silhouette, 640, 360)
    shift = (centroid(probability) - centroid(mask)).norm(dim=-1)
    assert float(shift) < 1.5, shift
    iou, soft = silhouette_iou(probability, mask)
    assert float(iou) > 0.6
    assert float(soft) > 0.5


def test_a_checkpoint_without_the_head_gives_no_silhouette_and_batches_keep_theirs(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(
        make_checkpoint(build_network(TINY_NET), TINY_NET, load_drone("m2ed"), (160, 128)),
        tmp_path / "old.pt",
    )
    image = np.zeros((2, 128, 160, 3), np.uint8)
    assert PoseEstimator.from_checkpoint(path, device="cpu").estimate(image, K).silhouette is None
    images = np.concatenate(
        [np.zeros((1, 360, 640, 3), np.uint8), red_box(640, 360, (101, 211, 125, 229))[0]]
    )
    result = stand_in_estimator(zoom=ZoomSettings(window=(192, 160))).estimate(images, K)
    assert result.zoomed.tolist() == [False, True]  # nothing confident to zoom on in the blank image
    assert result.silhouette.probability.shape == (2, 60, 80)  # the window's 48x40 map padded
    picked = result.take(torch.tensor([1]))
    joined = PoseEstimate.concatenate([picked, result.take(torch.tensor([0]))])
    torch.testing.assert_close(joined.silhouette.probability, result.silhouette.probability.flip(0))
    torch.testing.assert_close(joined.silhouette.grid.origin, result.silhouette.grid.origin.flip(0))
