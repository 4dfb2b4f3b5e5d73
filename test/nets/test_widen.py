"""Function-preserving widening: a wider HRNet started from a narrower one computes its heatmaps."""

from __future__ import annotations

import pytest
import torch

from drone_pose.inference.checkpoint import plain_network_config
from drone_pose.nets.build import build_network
from drone_pose.nets.widen import WideningError, is_widening, widen_state_dict

NARROW = {
    "architecture": "hrnet",
    "heatmaps": 9,
    "stem_channels": 16,
    "stem_planes": 8,
    "stem_blocks": 1,
    "stages": [
        {"modules": 1, "blocks": [1, 1], "channels": [8, 16]},
        {"modules": 1, "blocks": [1, 1, 1], "channels": [8, 16, 32]},
    ],
}
WIDE = {  # 1.5x the width everywhere, with the stem 2x: copies per channel differ (1 or 2)
    **NARROW,
    "stem_channels": 32,
    "stem_planes": 12,
    "stages": [
        {"modules": 1, "blocks": [1, 1], "channels": [12, 24]},
        {"modules": 1, "blocks": [1, 1, 1], "channels": [12, 24, 48]},
    ],
}


def trained_like(config: dict) -> torch.nn.Module:
    """A network with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    network = build_network(config)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return network


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_widened_network_computes_the_narrow_networks_heatmaps(mode):
    """Exact copies (noise 0): the same heatmaps in inference and in training (BatchNorm on the batch)."""
    narrow = trained_like(NARROW)
    wide = build_network(WIDE)
    wide.load_state_dict(widen_state_dict(narrow.state_dict(), wide, noise=0.0))
    narrow.train(mode == "train")
    wide.train(mode == "train")
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = narrow(images)[-1], wide(images)[-1]
    assert got.shape == expected.shape == (2, 9, 16, 20)
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))


def test_noise_breaks_the_copies_apart_and_keeps_the_heatmaps_close():
    """With the default noise a copied channel's weights differ from its source's, so training can
    tell them apart; the heatmaps move by about a percent of their range."""
    narrow = trained_like(NARROW).eval()
    wide = build_network(WIDE)
    state = widen_state_dict(narrow.state_dict(), wide)
    exact = widen_state_dict(narrow.state_dict(), wide, noise=0.0)
    wide.load_state_dict(state)
    wide.eval()
    stem, stem_exact = state["stem.0.0.weight"], exact["stem.0.0.weight"]  # [32,3,3,3] from [16,3,3,3]
    assert torch.equal(stem[:16], stem_exact[:16])  # the original channels are kept
    copies = (stem[16:] - stem_exact[16:]).flatten(1).norm(dim=1)
    assert bool((copies > 0).all())
    assert bool((copies < 0.1 * stem_exact[16:].flatten(1).norm(dim=1)).all())
    images = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = narrow(images)[-1], wide(images)[-1]
    difference = float((got - expected).abs().max())
    assert 0 < difference < 0.05 * float(expected.abs().max())


def test_only_a_wider_network_of_the_same_layout_counts_as_a_widening():
    assert is_widening(NARROW, WIDE)
    assert is_widening(plain_network_config("hrnet_lite"), plain_network_config("hrnet_small"))
    assert not is_widening(plain_network_config("hrnet_small"), plain_network_config("hrnet_w48"))
    assert not is_widening(WIDE, NARROW)
    assert not is_widening(NARROW, NARROW)
    deeper = {**WIDE, "stages": [WIDE["stages"][0], {**WIDE["stages"][1], "blocks": [2, 2, 2]}]}
    assert not is_widening(NARROW, deeper)
    assert not is_widening({**NARROW, "higher": True}, {**WIDE, "higher": True})
    with pytest.raises(WideningError, match="cannot widen"):
        widen_state_dict(trained_like(WIDE).state_dict(), build_network(NARROW))
