"""The deployable heatmap model: RGB in [0, 1] -> one heatmap per keypoint at the finest resolution.

Wraps a keypoint network with the normalisation it was trained with and the inference-time
aggregation of its outputs, so that the estimator and the exported ONNX / TorchScript models run
exactly the same computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HeatmapPredictor(nn.Module):
    """images [B,3,H,W] float RGB in [0, 1] -> heatmaps [B,K,h,w] float32 (finest output resolution).

    network: normalised images -> list of heatmap tensors, finest last (extra channels such as
    associative-embedding tags after the first `keypoints` are ignored). Several outputs at the
    finest size (stacked hourglass) -> the last one; outputs at several sizes (HigherHRNet) -> the
    coarser ones upsampled bilinearly and averaged with the finest.
    """

    def __init__(
        self,
        network: nn.Module,
        keypoints: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.network = network
        self.keypoints = keypoints
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.combine(self.network((images - self.mean) / self.std))

    def combine(self, outputs: list[Tensor]) -> Tensor:
        """The inference heatmaps [B,K,h,w] of the raw network outputs (the aggregation above)."""
        heatmaps = [o[:, : self.keypoints].float() for o in outputs]
        finest = heatmaps[-1]
        if all(h.shape[-2:] == finest.shape[-2:] for h in heatmaps):
            return finest
        total = finest
        for coarse in heatmaps[:-1]:
            total = total + F.interpolate(
                coarse, size=finest.shape[-2:], mode="bilinear", align_corners=False
            )
        return total / len(heatmaps)

    def normalise(self, images: Tensor) -> Tensor:
        """Network input of RGB images [B,3,H,W] in [0, 1]."""
        return (images - self.mean) / self.std
