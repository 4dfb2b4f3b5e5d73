"""Stacked Hourglass network (Newell et al., 2016): repeated bottom-up/top-down heatmap refinement."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drone_pose.nets.mask_head import MaskHead


@dataclass(frozen=True)
class HourglassConfig:
    """stacks: hourglasses in sequence; depth: downsamplings per hourglass; features: width;
    mask_head: add the silhouette head (drone_pose.nets.mask_head) on the last stack's features and
    the stem's."""

    heatmaps: int = 9
    stacks: int = 2
    depth: int = 4
    features: int = 128
    mask_head: bool = False


class PreActResidual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 (c/2), BN-ReLU-3x3, BN-ReLU-1x1 (c), identity/1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 1),
        )  # fmt: skip
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """One hourglass of the given recursion depth; output has the input's size."""

    def __init__(self, depth: int, features: int) -> None:
        super().__init__()
        self.skip = PreActResidual(features, features)
        self.down = PreActResidual(features, features)
        self.inner = Hourglass(depth - 1, features) if depth > 1 else PreActResidual(features, features)
        self.up = PreActResidual(features, features)

    def forward(self, x: Tensor) -> Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2, ceil_mode=True))))
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class StackedHourglass(nn.Module):
    """images [B,3,H,W] -> list of heatmaps [B,K,ceil(H/4),ceil(W/4)], one per stack (last = final);
    with the mask head the last gains a last channel, the silhouette logits."""

    def __init__(self, config: HourglassConfig) -> None:
        super().__init__()
        self.config = config
        f = config.features
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            PreActResidual(64, 128), nn.MaxPool2d(2, ceil_mode=True),
            PreActResidual(128, 128), PreActResidual(128, f),
        )  # fmt: skip
        self.hourglasses = nn.ModuleList(Hourglass(config.depth, f) for _ in range(config.stacks))
        self.features = nn.ModuleList(
            nn.Sequential(PreActResidual(f, f), nn.Conv2d(f, f, 1), nn.BatchNorm2d(f), nn.ReLU(inplace=True))
            for _ in range(config.stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(f, config.heatmaps, 1) for _ in range(config.stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(f, f, 1) for _ in range(config.stacks - 1))
        self.merge_heatmaps = nn.ModuleList(
            nn.Conv2d(config.heatmaps, f, 1) for _ in range(config.stacks - 1)
        )
        self.mask_head = MaskHead(f, f) if config.mask_head else None

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)
        early = x  # 1/4 resolution (the mask head reads it)
        outputs = []
        for index, (hourglass, features, head) in enumerate(
            zip(self.hourglasses, self.features, self.heads, strict=True)
        ):
            y = features(hourglass(x))
            heatmaps = head(y)
            if index < len(self.merge_features):
                x = x + self.merge_features[index](y) + self.merge_heatmaps[index](heatmaps)
            elif self.mask_head is not None:
                heatmaps = torch.cat((heatmaps, self.mask_head(y, early).to(heatmaps.dtype)), dim=1)
            outputs.append(heatmaps)
        return outputs
