"""Keypoint networks: presets, fidelity of the parameter counts, any input size, config validation."""

from __future__ import annotations

import pytest
import torch

from drone_pose.nets.build import (
    NetworkConfigError,
    build_network,
    count_parameters,
    network_config,
    preset_name,
)

OFFICIAL_HIGHER_HRNET_W48_COCO = 63.8e6


def test_coco_higher_hrnet_w48_matches_the_official_parameter_count():
    count = count_parameters(build_network("higher_hrnet_w48_coco"))
    assert abs(count - OFFICIAL_HIGHER_HRNET_W48_COCO) / OFFICIAL_HIGHER_HRNET_W48_COCO < 0.005


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("hrnet_lite", [(9, 60, 80)]),
        ("hrnet_small", [(9, 60, 80)]),
        ("hourglass", [(9, 60, 80), (9, 60, 80)]),
        ("hourglass_lite", [(9, 60, 80), (9, 60, 80)]),
    ],
)
def test_real_forward_and_backward_on_cpu(name, shapes):
    model = build_network(name)
    images = torch.randn(2, 3, 240, 320)
    outputs = model(images)
    assert [tuple(o.shape[1:]) for o in outputs] == shapes
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_study_networks_produce_heatmaps_at_the_study_resolutions():
    images = torch.randn(1, 3, 240, 320)
    with torch.inference_mode():
        assert [tuple(o.shape) for o in build_network("hrnet_w48").eval()(images)] == [(1, 9, 60, 80)]
        higher = build_network("higher_hrnet_w48").eval()(images)
    assert [tuple(o.shape) for o in higher] == [(1, 9, 60, 80), (1, 9, 120, 160)]


@pytest.mark.parametrize("size", [(239, 321), (100, 130), (64, 64)])
def test_any_input_size_works(size):
    height, width = size
    with torch.inference_mode():
        outputs = build_network("hrnet_lite").eval()(torch.randn(1, 3, height, width))
    assert outputs[0].shape[-2:] == (-(-height // 4), -(-width // 4))
    with torch.inference_mode():
        hourglass = build_network("hourglass").eval()(torch.randn(1, 3, height, width))
    assert hourglass[-1].shape[-2:] == (-(-height // 4), -(-width // 4))


def test_yaml_config_builds_the_same_network(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(
        "architecture: hrnet\nheatmaps: 9\nstem_channels: 32\nstem_planes: 16\nstem_blocks: 1\n"
        "stages:\n  - {modules: 1, blocks: [2, 2], channels: [16, 32]}\n"
        "  - {modules: 2, blocks: [2, 2, 2], channels: [16, 32, 64]}\n"
    )
    assert count_parameters(build_network(path)) == count_parameters(build_network("hrnet_lite"))
    assert preset_name(path) == "hrnet_lite"


def test_preset_names_of_mappings():
    small = {
        "architecture": "hrnet",
        "heatmaps": 9,
        "stem_channels": 64,
        "stem_planes": 32,
        "stem_blocks": 1,
        "stages": [
            {"modules": 1, "blocks": [2, 2], "channels": [32, 64]},
            {"modules": 2, "blocks": [2, 2, 2], "channels": [32, 64, 128]},
        ],
    }
    assert preset_name(small) == "hrnet_small"
    assert preset_name("hrnet_w48") == "hrnet_w48"
    assert preset_name({**small, "stem_channels": 48}) is None
    assert 2.1e6 < count_parameters(build_network("hrnet_small")) < 2.2e6


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "resnet"}, "architecture must be one of"),
        ({"architecture": "hourglass", "stack": 2}, "unknown key 'stack'"),
        ({"architecture": "hourglass", "features": "wide"}, "features must be a positive integer"),
        ({"architecture": "hourglass", "features": 0}, "features must be a positive integer"),
        ({"architecture": "hrnet", "heatmaps": 9}, "needs 'stages'"),
        ({"architecture": "hrnet", "higher": "yes", "stages": []}, "higher must be true or false"),
        (
            {"architecture": "hrnet", "stages": [{"modules": 1, "blocks": [4], "channels": [48, 96]}]},
            r"stages\[0\]",
        ),
    ],
)
def test_bad_configs_name_the_problem(config, message):
    with pytest.raises(NetworkConfigError, match=message):
        build_network(config)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(NetworkConfigError, match="hrnet_lite"):
        network_config("hrnet_w99")
