"""Function-preserving widening of a trained HRNet (Net2WiderNet, Chen et al. 2016).

A wider network of the same layout starts from a narrower one's weights and computes the same
heatmaps: each new channel copies an existing one (picked at random), and every convolution that
reads a copied channel divides the weights of all copies by their number. A little noise on the
copies' incoming weights breaks the symmetry that would otherwise keep copies equal in training.
Used by `drone-pose train` when `init` names a narrower network (drone_pose.train.trainer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from drone_pose.errors import UserError
from drone_pose.nets.hrnet import HRNetConfig

_WIDTH_KEYS = ("stem_channels", "stem_planes")


class WideningError(UserError):
    """The two networks cannot be related by widening."""


def is_widening(narrow: dict[str, Any], wide: dict[str, Any]) -> bool:
    """Whether HRNet config `wide` is `narrow` with some channel widths raised and nothing else
    changed (no HigherHRNet module: its concatenated input is not widened channel by channel)."""
    if narrow.get("architecture") != "hrnet" or wide.get("architecture") != "hrnet":
        return False
    narrow, wide = _with_defaults(narrow), _with_defaults(wide)
    if narrow["higher"] or wide["higher"] or narrow == wide:
        return False
    others = lambda config: {k: v for k, v in config.items() if k not in (*_WIDTH_KEYS, "stages")}  # noqa: E731
    if others(narrow) != others(wide) or len(narrow["stages"]) != len(wide["stages"]):
        return False
    pairs = [(narrow[key], wide[key]) for key in _WIDTH_KEYS]
    for small, large in zip(narrow["stages"], wide["stages"], strict=True):
        if small["modules"] != large["modules"] or list(small["blocks"]) != list(large["blocks"]):
            return False
        pairs += list(zip(small["channels"], large["channels"], strict=True))
    return all(large >= small for small, large in pairs)


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """An HRNet config dict with every HRNetConfig field present (the defaults filled in)."""
    defaults = {f.name: f.default for f in dataclasses.fields(HRNetConfig) if f.name != "stages"}
    return {**defaults, **config}


def widen_state_dict(
    narrow_state: dict[str, Tensor], wide_network: nn.Module, seed: int = 0, noise: float = 0.01
) -> dict[str, Tensor]:
    """State dict for `wide_network` computing what the network of `narrow_state` computes.

    noise: std of the Gaussian added to the copied channels' incoming convolution weights,
    relative to each weight tensor's std (0: exact copies). Raises WideningError when a tensor is
    narrower in the wide network, or for a grouped convolution.
    """
    generator = torch.Generator().manual_seed(seed)
    sources: dict[tuple[int, int], Tensor] = {}  # (narrow width, wide width) -> source channel per channel

    def source(narrow: int, wide: int) -> Tensor:
        if (narrow, wide) not in sources:
            extra = torch.randint(narrow, (wide - narrow,), generator=generator)
            sources[(narrow, wide)] = torch.cat((torch.arange(narrow), extra))
        return sources[(narrow, wide)]

    wide_state = wide_network.state_dict()
    widened: dict[str, Tensor] = {}
    for module_name, module in wide_network.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, target in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            key = prefix + name
            if key not in wide_state:  # a non-persistent buffer
                continue
            if key not in narrow_state:
                raise WideningError(f"{key} is missing from the narrower network")
            widened[key] = _widen_tensor(
                key, narrow_state[key], target, module, name, source, generator, noise
            )
    return widened


def _widen_tensor(
    key: str,
    narrow: Tensor,
    target: Tensor,
    module: nn.Module,
    name: str,
    source: Callable[[int, int], Tensor],
    generator: torch.Generator,
    noise: float,
) -> Tensor:
    """One tensor of the wide network from its narrow counterpart (see widen_state_dict)."""
    if narrow.shape == target.shape:
        return narrow.clone()
    if narrow.ndim != target.ndim or any(a > b for a, b in zip(narrow.shape, target.shape, strict=True)):
        raise WideningError(f"{key}: {list(narrow.shape)} cannot widen to {list(target.shape)}")
    is_conv = isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and name == "weight"
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.groups != 1:
        raise WideningError(f"{key}: grouped convolutions are not widened")
    # Conv2d weights are [out, in, kh, kw]; ConvTranspose2d weights [in, out, kh, kw]
    in_dim = (0 if isinstance(module, nn.ConvTranspose2d) else 1) if is_conv else None
    out_dim = 1 - in_dim if in_dim is not None else 0
    result = narrow
    for dim in range(narrow.ndim):
        if narrow.shape[dim] == target.shape[dim]:
            continue
        index = source(narrow.shape[dim], target.shape[dim])
        result = result.index_select(dim, index)
        if dim == in_dim:
            copies = torch.bincount(index, minlength=narrow.shape[dim])[index].to(result.dtype)
            shape = [1] * result.ndim
            shape[dim] = -1
            result = result / copies.view(shape)
    if is_conv and noise > 0 and narrow.shape[out_dim] != target.shape[out_dim]:
        copied = torch.zeros(target.shape[out_dim], dtype=torch.bool)
        copied[narrow.shape[out_dim] :] = True
        shape = [1] * result.ndim
        shape[out_dim] = -1
        jitter = torch.randn(result.shape, generator=generator, dtype=result.dtype) * noise * narrow.std()
        result = result + jitter * copied.view(shape).to(result.dtype)
    return result.contiguous()
