"""The deployable heatmap model: RGB in [0, 1] -> one heatmap per keypoint at the finest resolution.

Wraps a keypoint network with the normalisation it was trained with and the inference-time
aggregation of its outputs, so that the estimator and the exported ONNX / TorchScript models run
exactly the same computation. A network with the silhouette head (drone_pose.nets.mask_head) also
gives the silhouette probability: `forward_with_silhouette`, or `StackedSilhouette` for callers that
pass one tensor around (the estimator's flip test and CUDA graphs); `forward` stays the heatmaps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drone_pose.nets.mask_head import has_mask_head, mask_logits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HeatmapPredictor(nn.Module):
    """images [B,3,H,W] float RGB in [0, 1] -> heatmaps [B,K,h,w] float32 (finest output resolution).

    network: normalised images -> list of heatmap tensors, finest last (extra channels such as
    associative-embedding tags or the silhouette logits after the first `keypoints` are ignored).
    Several outputs at the finest size (stacked hourglass) -> the last one; outputs at several sizes
    (HigherHRNet) -> the coarser ones upsampled bilinearly and averaged with the finest.
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

    @property
    def has_silhouette(self) -> bool:
        """Whether the network has the silhouette head."""
        return has_mask_head(self.network)

    def forward_with_silhouette(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(heatmaps [B,K,h,w] as forward's, silhouette probability [B,h,w] float32 in [0, 1] on the
        finest heatmap grid) of images [B,3,H,W] in [0, 1]; the network must have the mask head."""
        outputs = self.network((images - self.mean) / self.std)
        return self.combine(outputs), torch.sigmoid(mask_logits(outputs))


class StackedSilhouette(nn.Module):
    """images [B,3,H,W] in [0, 1] -> [B,K+1,h,w]: a mask-head predictor's heatmaps with its
    silhouette probability as channel K (one tensor for the flip test and CUDA graphs; the flip
    test's permutation maps channel K to itself)."""

    def __init__(self, predictor: HeatmapPredictor) -> None:
        super().__init__()
        if not predictor.has_silhouette:
            raise ValueError("StackedSilhouette needs a network with the mask head")
        self.predictor = predictor

    def forward(self, images: Tensor) -> Tensor:
        heatmaps, silhouette = self.predictor.forward_with_silhouette(images)
        return torch.cat((heatmaps, silhouette[:, None]), dim=1)
