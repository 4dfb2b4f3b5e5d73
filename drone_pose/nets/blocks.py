"""Residual building blocks shared by the keypoint networks (NCHW tensors)."""

from __future__ import annotations

from torch import Tensor, nn

BN_MOMENTUM = 0.1


def conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True
) -> nn.Sequential:
    """Convolution (no bias, 'same' padding for odd kernels) + BatchNorm (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; expansion 1."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_channels, channels, 3, stride),
            conv_bn(channels, channels, 3, relu=False),
        )
        self.shortcut = (
            conv_bn(in_channels, channels, 1, stride, relu=False)
            if stride != 1 or in_channels != channels
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convolutions with expansion 4 and a projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.body = nn.Sequential(
            conv_bn(in_channels, channels, 1),
            conv_bn(channels, channels, 3, stride),
            conv_bn(channels, out_channels, 1, relu=False),
        )
        self.shortcut = (
            conv_bn(in_channels, out_channels, 1, stride, relu=False)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def residual_stack(block: type[nn.Module], in_channels: int, channels: int, count: int) -> nn.Sequential:
    """count blocks of `block`; the first adapts in_channels to channels * expansion."""
    layers = [block(in_channels, channels)]
    layers += [block(channels * block.expansion, channels) for _ in range(count - 1)]
    return nn.Sequential(*layers)
