"""The silhouette head: an extra output channel on every architecture that leaves the heatmaps
alone, its training targets, and where its maps lie in the original image."""

from __future__ import annotations

import pytest
import torch

from drone_pose.nets.build import NetworkConfigError, build_network, network_config
from drone_pose.nets.heatmap_codec import heatmap_to_image
from drone_pose.nets.mask_head import freeze_all_but_mask_head, has_mask_head, mask_logits
from drone_pose.nets.predictor import HeatmapPredictor, StackedSilhouette
from drone_pose.nets.silhouette import (
    concatenate_silhouettes,
    image_grid,
    mask_targets,
    on_image,
    silhouette_iou,
    take_silhouettes,
    window_grid,
    zoomed_silhouettes,
)
from drone_pose.nets.zoom import ZoomSettings, plan_zoom, window_to_image
from drone_pose.render.image_window import ImageWindow, SilhouetteMap

from ..tiny_models import TINY_NET

TINY_HOURGLASS = {"architecture": "hourglass", "heatmaps": 9, "stacks": 2, "depth": 2, "features": 16}
NETWORKS = {
    "hrnet": TINY_NET,
    "higher_hrnet": {**TINY_NET, "higher": True, "deconv_blocks": 1},
    "hourglass": TINY_HOURGLASS,
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_head_adds_one_channel_to_the_finest_output_and_changes_no_heatmap(name):
    plain = build_network(NETWORKS[name]).eval()
    masked = build_network({**NETWORKS[name], "mask_head": True}).eval()
    assert not has_mask_head(plain)
    assert has_mask_head(masked)
    loaded = masked.load_state_dict(plain.state_dict(), strict=False)  # an old checkpoint's weights
    assert loaded.missing_keys
    assert all(key.startswith("mask_head.") for key in loaded.missing_keys)
    assert not loaded.unexpected_keys
    images = torch.rand(2, 3, 72, 100)
    with torch.inference_mode():
        before, after = plain(images), masked(images)
    assert len(before) == len(after)
    for old, new in zip(before[:-1], after[:-1], strict=True):
        assert torch.equal(old, new)
    assert after[-1].shape[1] == before[-1].shape[1] + 1
    assert torch.equal(after[-1][:, :-1], before[-1])
    assert mask_logits(after).shape == (2, *before[-1].shape[-2:])
    with torch.inference_mode():
        heatmaps, silhouette = HeatmapPredictor(masked, 9).eval().forward_with_silhouette(images)
        assert torch.equal(heatmaps, HeatmapPredictor(plain, 9).eval()(images))
        stacked = StackedSilhouette(HeatmapPredictor(masked, 9).eval())(images)
    assert silhouette.shape == (2, *heatmaps.shape[-2:])
    assert float(silhouette.min()) >= 0
    assert torch.equal(stacked[:, :9], heatmaps)
    assert torch.equal(stacked[:, 9], silhouette)


def test_a_preset_with_fields_changed_and_bad_values_are_named():
    assert network_config({"preset": "hrnet_lite", "mask_head": True}) == {
        **network_config("hrnet_lite"),
        "mask_head": True,
    }
    with pytest.raises(NetworkConfigError, match="unknown preset"):
        network_config({"preset": "hrnet_huge"})
    with pytest.raises(NetworkConfigError, match="mask_head must be true or false"):
        network_config({"preset": "hrnet_lite", "mask_head": "yes"})


def test_freezing_leaves_only_the_head_trainable_and_the_rest_in_eval_mode():
    network = build_network({**TINY_NET, "mask_head": True})
    network.train()
    freeze_all_but_mask_head(network)
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert trainable
    assert all(name.startswith("mask_head.") for name in trainable)
    assert network.mask_head.training
    assert not network.stem.training
    statistics = {k: v.clone() for k, v in network.state_dict().items() if "running" in k}
    network(torch.rand(2, 3, 64, 64))
    changed = {
        k for k, v in network.state_dict().items() if "running" in k and not torch.equal(v, statistics[k])
    }
    assert changed
    assert all(key.startswith("mask_head.") for key in changed)


def test_mask_targets_area_average_each_heatmap_pixel_and_pad_like_the_network():
    mask = torch.zeros(1, 10, 13)
    mask[0, 2:6, 1:4] = 1.0  # rows 2-5, columns 1-3
    target = mask_targets(mask, (3, 4))  # stride 4; the network pads 10x13 to 12x16
    expected = torch.zeros(1, 3, 4)
    expected[0, 0, 0] = 6 / 16  # rows 2-3, columns 1-3
    expected[0, 1, 0] = 6 / 16  # rows 4-5
    torch.testing.assert_close(target, expected)
    assert mask_targets(torch.ones(2, 8, 8), (4, 4)).eq(1.0).all()


def test_the_first_pass_grid_is_the_keypoints_mapping_also_when_resized_anisotropically():
    grid = image_grid((80, 60), (1280, 720), 1)  # strides 16 and 12
    assert grid.pixel_size.shape == (1, 2)
    heatmap_xy = torch.tensor([[[3.0, 7.0], [79.0, 0.0]]])
    expected = heatmap_to_image(heatmap_xy, torch.tensor([16.0, 12.0]))
    torch.testing.assert_close(grid.to_image(heatmap_xy), expected)
    square = image_grid((80, 60), (640, 480), 2)
    assert square.pixel_size.shape == (2,)
    torch.testing.assert_close(square.origin, torch.full((2, 2), 3.5))


def test_a_zoomed_window_map_lies_where_its_keypoints_are_mapped():
    images = torch.rand(2, 3, 240, 320)
    keypoints = torch.tensor([[[100.0, 80.0], [120.0, 95.0]], [[200.0, 100.0], [300.0, 200.0]]])
    plan = plan_zoom(images, images, keypoints, torch.ones(2, 2), 0.5, ZoomSettings(window=(192, 160)))
    assert plan.index.tolist() == [0]  # the second drone is large already
    grid = window_grid(plan, (48, 40))
    heatmap_xy = torch.tensor([[[0.0, 0.0], [10.0, 20.0], [47.0, 39.0]]])
    expected = window_to_image(heatmap_to_image(heatmap_xy, 4.0), plan.windows, plan.size)
    torch.testing.assert_close(grid.to_image(heatmap_xy), expected)
    # a mixed batch: the window map takes image 0's place, padded to the first pass's grid
    first = SilhouetteMap(torch.rand(2, 60, 80), image_grid((80, 60), (320, 240), 2))
    window = torch.rand(1, 40, 48)
    both = zoomed_silhouettes(first, plan, window)
    assert both.probability.shape == (2, 60, 80)
    assert torch.equal(both.probability[0, :40, :48], window[0])
    assert both.probability[0, 40:].eq(0).all()
    assert torch.equal(both.probability[1], first.probability[1])
    torch.testing.assert_close(both.grid.origin[0], grid.origin[0])
    picked = take_silhouettes(both, torch.tensor([1]))
    assert torch.equal(picked.probability, first.probability[1:])
    joined = concatenate_silhouettes([picked, take_silhouettes(both, torch.tensor([0]))])
    assert torch.equal(joined.probability, both.probability.flip(0))


def test_per_axis_pixel_sizes_keep_the_image_window_consistent():
    origin = torch.tensor([[2.0, 3.0]])
    stretched = ImageWindow(origin, torch.tensor([[4.0, 2.0]]), 5, 4)
    grid_xy = torch.tensor([[[1.0, 1.0], [4.0, 3.0]]])
    torch.testing.assert_close(stretched.to_image(grid_xy), torch.tensor([[[6.0, 5.0], [18.0, 9.0]]]))
    torch.testing.assert_close(stretched.from_image(stretched.to_image(grid_xy)), grid_xy)
    K = torch.tensor([[100.0, 0.0, 160.0], [0.0, 100.0, 120.0], [0.0, 0.0, 1.0]])
    point = torch.tensor([0.3, -0.2, 2.0])
    image_uv = (K @ point)[:2] / point[2]
    window_uvw = stretched.intrinsics(K)[0] @ point
    torch.testing.assert_close(
        window_uvw[:2] / window_uvw[2], stretched.from_image(image_uv[None, None])[0, 0]
    )
    isotropic = ImageWindow(origin, torch.tensor([4.0]), 5, 4)
    same = ImageWindow(origin, torch.tensor([[4.0, 4.0]]), 5, 4)
    torch.testing.assert_close(isotropic.pixel_centres(), same.pixel_centres())
    torch.testing.assert_close(isotropic.intrinsics(K), same.intrinsics(K))


def test_silhouette_iou_and_resampling_to_the_image():
    truth = torch.zeros(1, 8, 8)
    truth[0, 2:6, 2:6] = 1.0
    iou, soft = silhouette_iou(truth.clone(), truth)
    assert float(iou) == 1.0
    assert float(soft) == 1.0
    half = truth.clone()
    half[0, 2:6, 4:6] = 0.0
    iou, soft = silhouette_iou(half, truth)
    assert float(iou) == pytest.approx(0.5)
    assert float(soft) == pytest.approx(0.5)
    assert silhouette_iou(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))[0].isnan().all()
    # a map on the stride-2 grid of the image, brought back to the image's pixels
    coarse = SilhouetteMap(mask_targets(truth, (4, 4)), image_grid((4, 4), (8, 8), 1))
    assert silhouette_iou(on_image(coarse, 8, 8), truth)[0] > 0.5
