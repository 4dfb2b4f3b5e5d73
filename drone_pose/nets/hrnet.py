"""HRNet (Sun et al., 2019) and HigherHRNet (Cheng et al., 2020) keypoint heatmap networks.

The trunk keeps a 1/4-resolution branch throughout and adds 1/8, 1/16, 1/32 branches stage by
stage; exchange units (multi-resolution modules) fuse every branch into every other. Heatmaps
come from the 1/4 branch. HigherHRNet adds a deconvolution module that concatenates the 1/4
features with the 1/4 heatmaps, upsamples x2 by a transposed convolution, refines with basic
blocks and predicts 1/2-resolution heatmaps; at inference the 1/4 maps are upsampled and averaged
with the 1/2 maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drone_pose.nets.blocks import BN_MOMENTUM, BasicBlock, Bottleneck, conv_bn, residual_stack
from drone_pose.nets.mask_head import MaskHead


@dataclass(frozen=True)
class StageConfig:
    """One HRNet stage: `modules` exchange units over len(channels) branches, `blocks` units each."""

    modules: int
    blocks: tuple[int, ...]
    channels: tuple[int, ...]


@dataclass(frozen=True)
class HRNetConfig:
    """Architecture of an HRNet / HigherHRNet keypoint network.

    stem_channels: width after the two stride-2 stem convolutions; stem_blocks: Bottleneck units of
    stage 1; stages: stages 2.. ; heatmaps: keypoint heatmaps; tag_maps: associative-embedding maps
    predicted next to the 1/4 heatmaps (COCO bottom-up only); higher: add the HigherHRNet module;
    deconv_blocks: BasicBlocks after the transposed convolution; mask_head: add the silhouette head
    (drone_pose.nets.mask_head) on the features of the finest heatmaps (the 1/4 branch, or the
    HigherHRNet module's 1/2 features) and stage 1's, its logits the finest output's last channel.
    """

    stages: tuple[StageConfig, ...]
    heatmaps: int = 9
    stem_channels: int = 64
    stem_blocks: int = 4
    stem_planes: int = 64  # Bottleneck planes of stage 1 (output: 4x this)
    tag_maps: int = 0
    higher: bool = False
    deconv_blocks: int = 4
    deconv_channels: int | None = None  # default: the width of the 1/4 branch
    final_kernel: int = 1
    mask_head: bool = False


class ExchangeUnit(nn.Module):
    """Parallel residual branches followed by all-to-all fusion (HRNet's multi-resolution module).

    With `output_all=False` only the highest-resolution branch is fused and returned.
    """

    def __init__(self, channels: tuple[int, ...], blocks: tuple[int, ...], output_all: bool = True) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            residual_stack(BasicBlock, c, c, n) for c, n in zip(channels, blocks, strict=True)
        )
        outputs = len(channels) if output_all else 1
        self.fuse = nn.ModuleList()
        for target in range(outputs):
            row = nn.ModuleList()
            for source in range(len(channels)):
                row.append(self._fuse_path(channels, source, target))
            self.fuse.append(row)
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _fuse_path(channels: tuple[int, ...], source: int, target: int) -> nn.Module:
        if source == target:
            return nn.Identity()
        if source > target:  # lower resolution: 1x1 conv, then nearest upsampling in forward
            return conv_bn(channels[source], channels[target], 1, relu=False)
        steps = []  # higher resolution: stride-2 3x3 convs, ReLU between them
        for step in range(target - source):
            last = step == target - source - 1
            out = channels[target] if last else channels[source]
            steps.append(conv_bn(channels[source], out, 3, 2, relu=not last))
        return nn.Sequential(*steps)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        features = [branch(x) for branch, x in zip(self.branches, features, strict=True)]
        fused = []
        for target, row in enumerate(self.fuse):
            size = features[target].shape[-2:]
            total = features[target]
            for source, path in enumerate(row):
                if source == target:
                    continue
                y = path(features[source])
                if source > target:
                    y = F.interpolate(y, size=size, mode="nearest")
                total = total + y
            fused.append(self.relu(total))
        return fused


def _transition(previous: tuple[int, ...], current: tuple[int, ...]) -> nn.ModuleList:
    """Adapters from one stage's branches to the next: 3x3 convs, and a stride-2 conv for the new branch."""
    layers = nn.ModuleList()
    for index, channels in enumerate(current):
        if index < len(previous):
            layers.append(
                conv_bn(previous[index], channels, 3) if previous[index] != channels else nn.Identity()
            )
        else:
            layers.append(conv_bn(previous[-1], channels, 3, 2))
    return layers


class HRNet(nn.Module):
    """HRNet / HigherHRNet heatmap network: images [B,3,H,W] -> heatmaps.

    forward returns a list of heatmap tensors, finest last: [B,K(+tags),H/4,W/4] and, with the
    HigherHRNet module, [B,K,H/2,W/2]; with the mask head the finest gains a last channel, the
    silhouette logits. Any H, W: the input is padded to a multiple of 32 and outputs are cropped
    back.
    """

    def __init__(self, config: HRNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(
            conv_bn(3, config.stem_channels, 3, 2), conv_bn(config.stem_channels, config.stem_channels, 3, 2)
        )
        self.layer1 = residual_stack(Bottleneck, config.stem_channels, config.stem_planes, config.stem_blocks)
        previous: tuple[int, ...] = (config.stem_planes * Bottleneck.expansion,)
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage_index, stage in enumerate(config.stages):
            self.transitions.append(_transition(previous, stage.channels))
            last_stage = stage_index == len(config.stages) - 1
            units = [
                ExchangeUnit(
                    stage.channels, stage.blocks, output_all=not (last_stage and unit == stage.modules - 1)
                )
                for unit in range(stage.modules)
            ]
            self.stages.append(nn.Sequential(*units))
            previous = stage.channels
        width = config.stages[-1].channels[0]
        outputs = config.heatmaps + config.tag_maps
        self.final = nn.Conv2d(width, outputs, config.final_kernel, padding=config.final_kernel // 2)
        self.deconv: nn.Module | None = None
        if config.higher:
            deconv_channels = config.deconv_channels or width
            self.deconv = nn.Sequential(
                nn.ConvTranspose2d(width + outputs, deconv_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(deconv_channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
                *[BasicBlock(deconv_channels, deconv_channels) for _ in range(config.deconv_blocks)],
            )
            self.final_higher = nn.Conv2d(
                deconv_channels, config.heatmaps, config.final_kernel, padding=config.final_kernel // 2
            )
        self.mask_head: MaskHead | None = None
        if config.mask_head:
            self.mask_head = MaskHead(
                (config.deconv_channels or width) if config.higher else width,
                config.stem_planes * Bottleneck.expansion,
            )

    def forward(self, images: Tensor) -> list[Tensor]:
        height, width = images.shape[-2:]
        padded = F.pad(images, (0, (-width) % 32, 0, (-height) % 32))
        early = self.layer1(self.stem(padded))  # 1/4 resolution, stage 1 (the mask head reads it)
        features = [early]
        for transition, stage in zip(self.transitions, self.stages, strict=True):
            inputs = [
                layer(features[index] if index < len(features) else features[-1])
                for index, layer in enumerate(transition)
            ]
            features = stage(inputs)
        quarter = self.final(features[0])
        if self.deconv is None:
            quarter = self._with_mask(quarter, features[0], early)
        outputs = [quarter[..., : _ceil_div(height, 4), : _ceil_div(width, 4)]]
        if self.deconv is not None:
            refined = self.deconv(torch.cat((features[0], quarter), dim=1))
            half = self._with_mask(self.final_higher(refined), refined, early)
            outputs.append(half[..., : _ceil_div(height, 2), : _ceil_div(width, 2)])
        return outputs

    def _with_mask(self, heatmaps: Tensor, features: Tensor, early: Tensor) -> Tensor:
        """The finest heatmaps with the mask head's logits appended as the last channel (if any)."""
        if self.mask_head is None:
            return heatmaps
        return torch.cat((heatmaps, self.mask_head(features, early).to(heatmaps.dtype)), dim=1)


def _ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)
