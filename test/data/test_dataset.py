"""Datasets and augmentation: geometry stays exact under augmentation; shards read lazily; corrupt
shards are skipped; determinism per (seed, epoch, index)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from drone_pose.data.augment import (
    AugmentConfig,
    GeometricSample,
    apply_warp,
    augment,
    mirror,
    random_geometric,
    warp_matrix,
)
from drone_pose.data.dataset import RenderedDataset, ShardDataset
from drone_pose.data.generate import GenerationSpec, generate_dataset, render_sample
from drone_pose.data.poses import PoseSamplingConfig
from drone_pose.data.shards import DatasetFormatError, read_index, read_shard
from drone_pose.data.synth import SceneConfig
from drone_pose.drones import load_drone
from drone_pose.geometry.camera import PinholeCamera
from drone_pose.nets.flip import mirror_permutation

K_UAVA = PinholeCamera.uava().K(torch.float64).numpy()


def project(R, t, K, points):
    p = points @ R.T + t
    uvw = p @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset("m2ed", 30, root / "m2ed", seed=3, workers=1, shard_size=8, progress=False)
    return root / "m2ed"


def spec(drone="m2ed", seed=0):
    return GenerationSpec(
        drone, tuple(map(tuple, K_UAVA)), 320, 240, seed, "", SceneConfig(), PoseSamplingConfig()
    )


def geometry_of(drone="m2ed", index=0):
    scene = render_sample(spec(drone), index)["scene"]
    return GeometricSample(
        scene.image.astype(np.float32) / 255,
        scene.mask,
        scene.keypoints,
        scene.visibility,
        K_UAVA,
        scene.R,
        scene.t,
    )


def test_warp_keeps_the_pinhole_model_exact():
    """After a roll/zoom/shift the keypoints are the projections of the drone's 3D keypoints at the
    returned pose with the returned K, and the mask moved with the image."""
    drone = load_drone("m2ed")
    sample = geometry_of()
    H, Rz, S = warp_matrix(sample.K, 25.0, 1.2, (15.0, -10.0), 320, 240)
    warped = apply_warp(sample, H, Rz, S)
    np.testing.assert_allclose(
        warped.keypoints, project(warped.R, warped.t, warped.K, drone.keypoints), atol=1e-3
    )
    np.testing.assert_allclose(np.linalg.det(warped.R), 1.0, atol=1e-9)
    assert warped.K[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert warped.K[0, 0] == pytest.approx(1.2 * K_UAVA[0, 0])
    # the keypoint centroid of the mask moves like the drone centre keypoint
    ys, xs = np.nonzero(warped.mask)
    centre = warped.keypoints[0]
    assert np.hypot(xs.mean() - centre[0], ys.mean() - centre[1]) < 0.25 * np.ptp(xs)
    # an independent check: warping back gives the original mask almost everywhere
    back = apply_warp(warped, np.linalg.inv(H), Rz.T, np.linalg.inv(S))
    inter = (back.mask & sample.mask).sum()
    assert inter / (back.mask | sample.mask).sum() > 0.9


def test_augmentation_keeps_keypoints_inside_and_changes_the_image():
    drone = load_drone("m2ed")
    config = AugmentConfig(rotation_deg=30, scale=(0.7, 1.4), shift_fraction=0.2)
    sample = geometry_of(index=1)
    for draw in range(10):
        out = augment(sample, np.random.default_rng(draw), config)
        np.testing.assert_allclose(out.keypoints, project(out.R, out.t, out.K, drone.keypoints), atol=1e-3)
        inside = (out.keypoints >= 0).all(1) & (out.keypoints[:, 0] <= 319) & (out.keypoints[:, 1] <= 239)
        assert inside.all()
        assert out.image.dtype == np.float32
        assert out.image.min() >= 0
        assert out.image.max() <= 1
        assert not np.allclose(out.image, sample.image)


def test_zoom_draws_centre_and_enlarge_the_drone_like_the_second_pass():
    """A zoom draw keeps the pinhole model exact, puts the drone near the centre and enlarges it to
    about the target (never shrinking it, at most max_zoom times)."""
    drone = load_drone("m2ed")
    config = AugmentConfig(zoom_probability=1.0, zoom_target_px=110.0, max_zoom=5.0)
    enlarged = 0
    for index in range(4):
        sample = geometry_of(index=index)
        size_before = float(np.linalg.norm(np.ptp(sample.keypoints, axis=0)))
        for draw in range(3):
            out = random_geometric(sample, np.random.default_rng(draw), config)
            np.testing.assert_allclose(
                out.keypoints, project(out.R, out.t, out.K, drone.keypoints), atol=1e-3
            )
            zoom = out.K[0, 0] / sample.K[0, 0]
            assert 1.0 <= zoom <= 5.0 + 1e-9
            size = float(np.linalg.norm(np.ptp(out.keypoints, axis=0)))
            if size_before < 60:  # the target (110 px x 0.75..1.33) is within 5x: reached
                assert 110 * 0.7 < size < 110 * 1.4
                enlarged += 1
            centre = (out.keypoints.min(0) + out.keypoints.max(0)) / 2
            assert np.abs(centre - (160, 120)).max() <= 0.1 * size + 1
    assert enlarged == 3  # the small drone of sample 2 (38 px), three draws


@pytest.mark.parametrize("drone_name", ["tello", "m2ed"])
def test_a_mirrored_sample_is_the_drone_at_the_mirrored_pose(drone_name):
    """Flipped left-right, the image shows the same drone at a proper pose (det R = 1) whose projection
    through the returned K lands on the relabelled keypoints; mirroring twice restores the sample."""
    drone = load_drone(drone_name)
    permutation = mirror_permutation(drone.keypoints)
    for index in range(3):
        sample = geometry_of(drone_name, index)
        flipped = mirror(sample, permutation)
        np.testing.assert_allclose(
            flipped.keypoints, project(flipped.R, flipped.t, flipped.K, drone.keypoints), atol=1e-3
        )
        np.testing.assert_allclose(np.linalg.det(flipped.R), 1.0, atol=1e-9)
        np.testing.assert_array_equal(flipped.image, sample.image[:, ::-1])
        np.testing.assert_array_equal(flipped.mask, sample.mask[:, ::-1])
        assert not np.allclose(flipped.R, sample.R)
        twice = mirror(flipped, permutation)
        np.testing.assert_allclose(twice.keypoints, sample.keypoints, atol=1e-4)
        np.testing.assert_allclose(twice.R, sample.R, atol=1e-12)
        np.testing.assert_allclose(twice.t, sample.t, atol=1e-12)
        np.testing.assert_allclose(twice.K, sample.K, atol=1e-12)


def test_mirror_draws_keep_the_augmented_geometry_exact():
    """With mirror draws, zoom draws and crops together, every augmented Tello sample still projects
    exactly; about the asked share of the draws is mirrored (the keypoint labels tell)."""
    drone = load_drone("tello")
    config = AugmentConfig(
        mirror_probability=0.5,
        mirror_permutation=tuple(mirror_permutation(drone.keypoints)),
        zoom_probability=0.7,
        max_zoom=8.0,
        crop=(192, 160),
    )
    sample = geometry_of("tello", 1)
    assert abs(sample.R[2, 1]) > 0.01  # the optical axis leaves the body x-z plane: draws tell apart
    mirrored = 0
    for draw in range(40):
        out = augment(sample, np.random.default_rng(draw), config)
        visible = out.visibility
        np.testing.assert_allclose(
            out.keypoints[visible], project(out.R, out.t, out.K, drone.keypoints)[visible], atol=1e-3
        )
        # unmirrored, out.R = Rz R (a roll about the optical axis); mirrored, out.R = Rz S R M
        mirrored += abs((out.R @ np.diag([1.0, -1.0, 1.0]) @ sample.R.T)[2, 2] - 1.0) < 1e-9
    assert 10 <= mirrored <= 30


def test_no_augmentation_is_the_identity():
    sample = geometry_of(index=2)
    out = augment(sample, np.random.default_rng(0), AugmentConfig.none())
    np.testing.assert_allclose(out.image, sample.image, atol=1e-6)
    np.testing.assert_array_equal(out.keypoints, sample.keypoints)


def test_bad_augment_config_is_named():
    with pytest.raises(ValueError, match=r"augment\.scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"augment\.zoom_probability"):
        AugmentConfig(zoom_probability=2.0)
    with pytest.raises(ValueError, match=r"augment\.mirror_probability > 0 needs"):
        AugmentConfig(mirror_probability=0.5)
    with pytest.raises(ValueError, match=r"augment\.mirror_permutation must be a permutation"):
        AugmentConfig(mirror_probability=0.5, mirror_permutation=(0, 0, 1))


def test_shard_dataset_matches_the_shards(dataset_root):
    data = ShardDataset(dataset_root, "train")
    index = read_index(dataset_root)
    shards = [read_shard(dataset_root / s["file"]) for s in index["splits"]["train"]]
    assert len(data) == sum(len(s) for s in shards) == 24
    sample = data[len(shards[0]) + 1]  # second sample of the second shard
    shard = shards[1]
    assert sample["image"].shape == (3, 240, 320)
    assert sample["image"].dtype == torch.float32
    expected = torch.from_numpy(shard.image(1)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(sample["image"], expected)
    assert torch.equal(sample["mask"], torch.from_numpy(shard.mask(1, 240, 320)))
    assert data.has_full_mask
    assert torch.equal(sample["full_mask"], torch.from_numpy(shard.full_mask(1, 240, 320)).float())
    assert bool((sample["full_mask"] >= sample["mask"].float()).all())  # occluders hide only
    torch.testing.assert_close(sample["keypoints"], torch.from_numpy(shard.keypoints[1]))
    assert int(sample["index"]) == int(shard.index[1])
    with pytest.raises(IndexError):
        data[len(data)]


def test_shard_dataset_in_a_dataloader_with_workers_is_deterministic(dataset_root):
    data = ShardDataset(dataset_root, "train", augment=AugmentConfig(), seed=7)

    def epoch_images(epoch, workers):
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=5, num_workers=workers, shuffle=False)
        return torch.cat([batch["image"] for batch in loader])

    first = epoch_images(0, 0)
    torch.testing.assert_close(first, epoch_images(0, 2))
    assert not torch.allclose(first, epoch_images(1, 0))


def test_a_corrupt_shard_is_skipped_and_counted(tmp_path):
    root = tmp_path / "d"
    generate_dataset("tello", 20, root, seed=4, workers=1, shard_size=6, progress=False)
    files = [s["file"] for s in read_index(root)["splits"]["train"]]
    raw = bytearray((root / files[0]).read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # a flipped byte inside the stored images: CRC mismatch
    (root / files[0]).write_bytes(bytes(raw))
    (root / files[1]).write_bytes(b"not a zip file")
    data = ShardDataset(root, "train")
    assert [path.endswith(files[0]) for path, _ in data.rejected] == [True, False]
    assert "CRC" in data.rejected[0][1]
    assert len(data) == 16 - 12
    assert data[0]["image"].shape == (3, 240, 320)
    for name in files[2:]:
        (root / name).unlink()
    with pytest.raises(DatasetFormatError, match="no readable shard"):
        ShardDataset(root, "train")
    with pytest.raises(ValueError, match="unknown split"):
        ShardDataset(root, "training")


def test_rendered_dataset_equals_the_written_one(dataset_root):
    index = read_index(dataset_root)
    rendered = RenderedDataset(spec(seed=index["seed"]), count=3)
    written = ShardDataset(dataset_root, "train")
    for i in range(3):
        a, b = rendered[i], written[i]
        assert int(a["index"]) == int(b["index"]) == i
        torch.testing.assert_close(a["keypoints"], b["keypoints"])
        assert torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["full_mask"], b["full_mask"])
        # JPEG storage: small per-pixel differences only
        assert (a["image"] - b["image"]).abs().mean() < 0.02


def test_the_full_mask_moves_with_the_image_through_mirror_zoom_roll_and_crop():
    """The mask head's target: an image whose red channel is the full mask stays equal to the
    augmented full mask through every geometric step, so targets are registered to the pixels."""
    sample = geometry_of()
    scene = render_sample(spec(), 0)["scene"]
    full = scene.full_mask.astype(np.float32)
    image = np.repeat(full[..., None], 3, axis=2)
    sample = GeometricSample(image, sample.mask, *dataclasses.astuple(sample)[2:7], full_mask=full)
    config = dataclasses.replace(
        AugmentConfig.none(),
        rotation_deg=20.0,
        scale=(0.8, 1.25),
        shift_fraction=0.1,
        zoom_probability=0.5,
        mirror_probability=0.5,
        mirror_permutation=tuple(mirror_permutation(load_drone("m2ed").keypoints)),
        crop=(192, 160),
    )
    for seed in range(4):
        out = augment(sample, np.random.default_rng(seed), config)
        assert out.full_mask.shape == (160, 192)
        np.testing.assert_allclose(out.full_mask, out.image[..., 0], atol=1e-6)
        assert out.full_mask.sum() > 0.5 * full.sum()  # the drone stays in the window
