"""The silhouette (mask) head: one extra output channel of drone-silhouette logits.

A keypoint network built with `mask_head: true` runs a small head on the features that feed its
finest heatmap layer together with its early 1/4-resolution features (HRNet: the stem's stage 1;
Hourglass: the stem), and appends its logits to the finest output as the last channel: outputs[-1]
is [B, heatmaps (+ tag maps) + 1, h, w] and outputs[-1][:, -1] the logits of "this heatmap pixel
is drone" (the drone's whole silhouette, occluders ignored, area-averaged over the pixel). Every
other channel, and every coarser output, is what the network computes without the head, so the
keypoint heatmaps do not depend on it.

Why the early features: the heatmap features of a trained keypoint network say where keypoints
are, not where the drone's edges run; with the early features the head learns silhouettes much
better (figures: docs/experiments.md, silhouette head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drone_pose.nets.blocks import BN_MOMENTUM, conv_bn

MASK_HEAD_PREFIX = "mask_head."  # the head's parameter names in a network's state_dict


class MaskHead(nn.Module):
    """(features [B,C,h,w], early features [B,E,h',w']) -> silhouette logits [B,1,h,w].

    The early features are reduced to `early_width` channels (1x1 conv-BN-ReLU), resized to h x w
    (bilinear) when they are coarser, concatenated with the features, then 3x3 conv-BN-ReLU to
    `width` channels, a 3x3 conv-BN-ReLU of dilation 2 (context) and a 1x1 conv to one channel."""

    def __init__(self, channels: int, early_channels: int, width: int = 24, early_width: int = 16) -> None:
        super().__init__()
        self.reduce = conv_bn(early_channels, early_width, 1)
        self.body = nn.Sequential(
            conv_bn(channels + early_width, width, 3),
            nn.Conv2d(width, width, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(width, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, features: Tensor, early: Tensor) -> Tensor:
        early = self.reduce(early)
        if early.shape[-2:] != features.shape[-2:]:
            early = F.interpolate(early, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return self.body(torch.cat((features, early.to(features.dtype)), dim=1))


def has_mask_head(network: nn.Module) -> bool:
    """Whether a keypoint network predicts a silhouette (was built with mask_head: true)."""
    return isinstance(getattr(network, "mask_head", None), MaskHead)


def mask_logits(outputs: list[Tensor]) -> Tensor:
    """The silhouette logits [B,h,w] of a mask-head network's raw outputs (finest output, last
    channel), in float32."""
    return outputs[-1][:, -1].float()


def freeze_all_but_mask_head(network: nn.Module) -> None:
    """Keep everything but the mask head fixed in training: no gradients, and BatchNorm statistics
    frozen (those modules in eval mode). Call after every network.train(): train() undoes the
    eval mode."""
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name.startswith(MASK_HEAD_PREFIX))
    network.eval()
    network.mask_head.train()
