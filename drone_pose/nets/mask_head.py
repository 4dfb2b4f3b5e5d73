"""The silhouette (mask) head: one extra output channel of drone-silhouette logits.

A keypoint network built with `mask_head: true` runs a small head (3x3 conv-BN-ReLU, 1x1 conv to one
channel) on the features that feed its finest heatmap layer and appends its logits to the finest
output as the last channel: outputs[-1] is [B, heatmaps (+ tag maps) + 1, h, w] and
outputs[-1][:, -1] the logits of "this heatmap pixel is drone" (the drone's whole silhouette,
occluders ignored, area-averaged over the pixel). Every other channel, and every coarser output,
is what the network computes without the head, so the keypoint heatmaps do not depend on it.
"""

from __future__ import annotations

from torch import Tensor, nn

from drone_pose.nets.blocks import conv_bn

MASK_HEAD_PREFIX = "mask_head."  # the head's parameter names in a network's state_dict


class MaskHead(nn.Module):
    """features [B,C,h,w] -> silhouette logits [B,1,h,w]: 3x3 conv-BN-ReLU (C channels), 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels, 3), nn.Conv2d(channels, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features)


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
