"""The zoomed second pass: windows, exact sampling geometry, and the mapping back to the image."""

from __future__ import annotations

import pytest
import torch

from drone_pose.nets.zoom import (
    ZoomSettings,
    ZoomWindows,
    crop_windows,
    window_to_image,
    zoom_refine,
    zoom_windows,
)


def coordinate_image(width: int, height: int) -> torch.Tensor:
    """[1,2,H,W]: channel 0 holds each pixel's x, channel 1 its y (bilinear sampling is exact on it)."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    return torch.stack((x, y))[None]


def box_keypoints(centre: tuple[float, float], size: float) -> torch.Tensor:
    """[1,4,2] corners of a square of diagonal `size` around `centre`."""
    half = size / 2 / 2**0.5
    cx, cy = centre
    return torch.tensor(
        [[[cx - half, cy - half], [cx + half, cy - half], [cx - half, cy + half], [cx + half, cy + half]]]
    )


def test_windows_enlarge_small_drones_up_to_the_limit_and_leave_large_ones():
    keypoints = torch.cat(
        [box_keypoints((100, 80), 50), box_keypoints((60, 60), 10), box_keypoints((160, 120), 200)]
    )
    confident = torch.ones(3, 4, dtype=torch.bool)
    windows = zoom_windows(keypoints, confident, (1.0, 1.0), ZoomSettings(target_px=110, max_zoom=3))
    assert windows.active.tolist() == [True, True, False]
    assert 1 / windows.scale[0, 0].item() == pytest.approx(110 / 50)
    assert 1 / windows.scale[1, 0].item() == pytest.approx(3.0)  # 11x asked, limited to 3x
    assert windows.centre[0].tolist() == pytest.approx([100, 80])


def test_windows_need_confident_keypoints_and_count_network_pixels():
    keypoints = box_keypoints((100, 80), 50)
    two = torch.tensor([[True, True, False, False]])
    one = torch.tensor([[True, False, False, False]])
    settings = ZoomSettings(target_px=110, max_zoom=3)
    assert not zoom_windows(keypoints, one, (1.0, 1.0), settings).active.item()
    assert zoom_windows(keypoints, two, (1.0, 1.0), settings).active.item()
    # a 640-wide image seen by a 320-wide network: the 50 px box is 25 network px, so 60 / 25 = 2.4x
    halved = zoom_windows(keypoints, torch.ones(1, 4, dtype=torch.bool), (0.5, 0.5), ZoomSettings(60, 3))
    assert 1 / (halved.scale[0, 0].item() * 0.5) == pytest.approx(2.4)


def test_crop_samples_exactly_where_window_to_image_says():
    image = coordinate_image(64, 48)
    windows = ZoomWindows(
        centre=torch.tensor([[30.3, 20.7]], dtype=torch.float64),
        scale=torch.tensor([[0.4, 0.4]], dtype=torch.float64),
        active=torch.tensor([True]),
    )
    crop = crop_windows(image, windows, (32, 24))
    v, u = torch.meshgrid(
        torch.arange(24.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64), indexing="ij"
    )
    window_points = torch.stack((u, v), -1).reshape(1, -1, 2)
    mapped = window_to_image(window_points, windows, (32, 24)).reshape(24, 32, 2)
    assert torch.allclose(crop[0, 0], mapped[..., 0], atol=1e-9)
    assert torch.allclose(crop[0, 1], mapped[..., 1], atol=1e-9)


def test_refine_maps_window_keypoints_back_to_the_image_point_they_show():
    """On the coordinate image a window pixel shows its own image coordinates: the refined keypoint
    must be exactly what the window showed at the located pixel."""
    image = coordinate_image(80, 60).float()
    keypoints = box_keypoints((41.25, 28.5), 20.0).float()
    confidences = torch.ones(1, 4)
    shown = []

    def locate(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shown.append(windows[:, :, 7, 13].clone())  # what window pixel (u=13, v=7) shows
        points = torch.tensor([13.0, 7.0]).expand(len(windows), 4, 2)
        return points, torch.full((len(windows), 4), 0.9)

    refined, new_confidences, zoomed = zoom_refine(
        locate, image, image, keypoints, confidences, 0.5, ZoomSettings(target_px=60, max_zoom=4)
    )
    assert zoomed.tolist() == [True]
    assert torch.allclose(refined[0], shown[0].expand(4, 2), atol=1e-4)
    assert new_confidences.tolist() == [[pytest.approx(0.9)] * 4]


def test_a_window_smaller_than_the_input_shows_the_same_image_points():
    """The second pass on a 40x30 window of an 80x60 input: the network sees a window of that size,
    and window pixels map back to the image points they show, as with a full-size window."""
    image = coordinate_image(80, 60).float()
    keypoints = box_keypoints((41.25, 28.5), 20.0).float()
    shown, sizes = [], []

    def locate(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(tuple(windows.shape[-2:]))
        shown.append(windows[:, :, 7, 13].clone())
        return torch.tensor([13.0, 7.0]).expand(len(windows), 4, 2), torch.ones(len(windows), 4)

    settings = ZoomSettings(target_px=60, max_zoom=4, window=(40, 30))
    refined, _, zoomed = zoom_refine(locate, image, image, keypoints, torch.ones(1, 4), 0.5, settings)
    assert zoomed.tolist() == [True]
    assert sizes == [(30, 40)]
    assert torch.allclose(refined[0], shown[0].expand(4, 2), atol=1e-4)


def test_refine_keeps_large_or_unsure_detections():
    image = torch.rand(2, 3, 60, 80)
    keypoints = torch.cat([box_keypoints((40, 30), 70), box_keypoints((40, 30), 10)]).float()
    confidences = torch.tensor([[0.9] * 4, [0.9, 0.01, 0.01, 0.01]])
    calls = []

    def locate(windows):
        calls.append(len(windows))
        return torch.zeros(len(windows), 4, 2), torch.ones(len(windows), 4)

    refined, kept_confidences, zoomed = zoom_refine(
        locate, image, image, keypoints, confidences, 0.5, ZoomSettings(target_px=60)
    )
    assert zoomed.tolist() == [False, False]
    assert calls == []
    assert torch.equal(refined, keypoints)
    assert torch.equal(kept_confidences, confidences)


def test_refine_samples_the_resized_image_when_the_original_is_larger():
    """A 160x120 original behind an 80x60 network: a 1.5x zoom would shrink the original (alias),
    so the window comes from the resized image and still lands at the same image points."""
    original = coordinate_image(160, 120).float()
    resized = torch.nn.functional.interpolate(original, size=(60, 80), mode="bilinear", align_corners=False)
    keypoints = box_keypoints((80.0, 60.0), 60.0).float()  # 30 network px
    settings = ZoomSettings(target_px=45, max_zoom=3)  # zoom 1.5: 1/1.5/0.5 = 1.33 image px per window px
    seen = []

    def locate(windows):
        seen.append(windows)
        return torch.tensor([[[40.0, 30.0]]]).expand(len(windows), 4, 2), torch.ones(len(windows), 4)

    refined, _, zoomed = zoom_refine(locate, original, resized, keypoints, torch.ones(1, 4), 0.5, settings)
    assert zoomed.tolist() == [True]
    assert seen[0].shape == (1, 2, 60, 80)
    # resized pixel (x', y') shows image coordinate 2 x' + 0.5; the window centre shows the box centre
    assert seen[0][0, :, 30, 40].tolist() == pytest.approx([80.0 + 0.5 * 1.333, 60.0 + 0.5 * 1.333], abs=0.05)
    windows = zoom_windows(keypoints, torch.ones(1, 4, dtype=torch.bool), (0.5, 0.5), settings)
    assert refined[0, 0].tolist() == pytest.approx(
        window_to_image(torch.tensor([[[40.0, 30.0]]]), windows, (80, 60))[0, 0].tolist(), abs=1e-4
    )


def test_settings_reject_impossible_values():
    with pytest.raises(ValueError, match="max_zoom"):
        ZoomSettings(target_px=110, max_zoom=0.5)
    assert ZoomSettings.from_dict(None) is None
    assert ZoomSettings.from_dict({"target_px": 90, "max_zoom": 2}) == ZoomSettings(90.0, 2.0)
    with_window = ZoomSettings(90.0, 2.0, window=(48, 32))
    assert ZoomSettings.from_dict(with_window.to_dict()) == with_window
    with pytest.raises(ValueError, match="window"):
        ZoomSettings(90.0, 2.0, window=(8, 32))
