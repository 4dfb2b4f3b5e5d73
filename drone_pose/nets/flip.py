"""Flip test: average a network's heatmaps with those of the mirrored image.

A drone whose body is mirror-symmetric about its x-z plane (x forward, y left, z up) looks, in a
horizontally flipped image, like the same drone in another pose with its left and right keypoints
swapped; the synthetic poses (any yaw, small tilt) cover both. Running the network on the image and
on its mirror, flipping the second heatmaps back, swapping their left/right channels and averaging
the two halves the network's own noise where the two views disagree. It costs a second network
pass over the same batch (one call on twice the batch). Pixel centres sit at integers in the input
and heatmap grids and the input width is a multiple of the stride, so flipping the heatmaps is the
exact inverse of flipping the input.

Modes: "off"; "zoom", only the zoomed second pass (drone_pose.nets.zoom), whose keypoints reach PnP
for small drones; "all", every network pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

FLIP_TEST_MODES = ("off", "zoom", "all")
MIRROR_TOLERANCE_M = 1e-4


def mirror_permutation(
    keypoints: np.ndarray | Tensor, tolerance_m: float = MIRROR_TOLERANCE_M
) -> list[int] | None:
    """For keypoints [K,3] (body frame, metres): index of each keypoint's mirror image across the body
    x-z plane (y -> -y), or None when some keypoint has none (the drone is not mirror-symmetric)."""
    points = np.asarray(keypoints, dtype=np.float64)
    mirrored = points * np.array([1.0, -1.0, 1.0])
    distance = np.linalg.norm(mirrored[:, None, :] - points[None, :, :], axis=-1)  # [K,K]
    nearest = distance.argmin(1)
    if not (distance[np.arange(len(points)), nearest] <= tolerance_m).all():
        return None
    if sorted(nearest.tolist()) != list(range(len(points))):
        return None
    return nearest.tolist()


def validate_flip_test(mode: str, keypoints: np.ndarray | Tensor) -> list[int] | None:
    """The channel permutation a flip-test mode needs (None for "off"); ValueError for an unknown mode
    or keypoints [K,3] without a mirror symmetry."""
    if mode not in FLIP_TEST_MODES:
        raise ValueError(f"flip_test must be one of {', '.join(FLIP_TEST_MODES)}, got {mode!r}")
    if mode == "off":
        return None
    permutation = mirror_permutation(keypoints)
    if permutation is None:
        raise ValueError(
            "flip_test needs keypoints that are mirror-symmetric about the body x-z plane (y -> -y); "
            "these are not"
        )
    return permutation


def flip_averaged(
    predict: Callable[[Tensor], Tensor], permutation: Sequence[int]
) -> Callable[[Tensor], Tensor]:
    """predict (images [N,3,H,W] -> heatmaps [N,K,h,w]) with the flip test: one call on the images
    and their mirrors [2N,3,H,W], heatmaps [N,K,h,w] averaged over the two views."""
    index = torch.as_tensor(list(permutation), dtype=torch.long)
    on_device: dict[torch.device, Tensor] = {}  # no host-to-device copy per call (CUDA-graph capture)

    def predict_flipped(images: Tensor) -> Tensor:
        count = images.shape[0]
        heatmaps = predict(torch.cat((images, images.flip(-1))))
        channels = on_device.get(heatmaps.device)
        if channels is None:
            channels = on_device.setdefault(heatmaps.device, index.to(heatmaps.device))
        mirrored = heatmaps[count:].flip(-1).index_select(1, channels)
        return 0.5 * (heatmaps[:count] + mirrored)

    return predict_flipped
