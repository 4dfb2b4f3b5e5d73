"""`drone-pose synth`: deterministic, split, sharded datasets that read back; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drone_pose.cli import main
from drone_pose.data.generate import GenerationSpec, generate_dataset, plan_jobs, render_sample
from drone_pose.data.poses import PoseSamplingConfig
from drone_pose.data.shards import DatasetFormatError, read_index, read_shard
from drone_pose.data.synth import SceneConfig


def all_samples(root):
    index = read_index(root)
    shards = [read_shard(root / s["file"]) for split in index["splits"].values() for s in split]
    return shards, index


def test_same_seed_same_dataset_whatever_the_workers_and_shards(tmp_path):
    one = generate_dataset("tello", 12, tmp_path / "a", seed=5, workers=1, shard_size=5, progress=False)
    two = generate_dataset("tello", 12, tmp_path / "b", seed=5, workers=2, shard_size=3, progress=False)
    assert one["statistics"] == two["statistics"]
    shards_a, _ = all_samples(tmp_path / "a")
    shards_b, _ = all_samples(tmp_path / "b")
    images_a = [s.image(i) for s in shards_a for i in range(len(s))]
    images_b = [s.image(i) for s in shards_b for i in range(len(s))]
    assert len(images_a) == len(images_b) == 12
    assert all(np.array_equal(a, b) for a, b in zip(images_a, images_b, strict=True))
    other = generate_dataset("tello", 12, tmp_path / "c", seed=6, workers=1, progress=False)
    assert other["statistics"] != one["statistics"]


def test_splits_are_disjoint_and_shards_read_back(tmp_path, capsys):
    assert main(["synth", "--drone", "m2ed", "--count", "20", "--out", str(tmp_path / "d"), "--seed", "1",
                 "--workers", "1", "--shard-size", "8"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 16, "val": 2, "test": 2}
    assert 30 <= summary["statistics"]["size_px"]["min"] <= summary["statistics"]["size_px"]["max"] <= 150
    shards, index = all_samples(tmp_path / "d")
    indices = np.concatenate([s.index for s in shards])
    assert sorted(indices) == list(range(20))
    width, height = index["camera"]["width"], index["camera"]["height"]
    shard = shards[0]
    image, mask = shard.image(0), shard.mask(0, height, width)
    assert image.shape == (height, width, 3)
    assert mask.any()
    K = np.array(index["camera"]["K"])
    p = np.array([[0.0, 0.0, 0.0]]) @ shard.R[0].T + shard.t[0]
    centroid = (p @ K.T)[0, :2] / p[0, 2]
    np.testing.assert_allclose(shard.keypoints[0, 0], centroid, atol=1e-3)


def test_lossless_stores_the_rendered_images_exactly(tmp_path):
    assert main(["synth", "--drone", "tello", "--count", "3", "--out", str(tmp_path / "png"), "--seed", "8",
                 "--workers", "1", "--splits", "0", "0", "1", "--lossless"]) == 0  # fmt: skip
    shards, index = all_samples(tmp_path / "png")
    assert index["image_encoding"] == "png"
    spec = GenerationSpec("tello", tuple(map(tuple, index["camera"]["K"])), index["camera"]["width"],
                          index["camera"]["height"], 8, "", SceneConfig(), PoseSamplingConfig())  # fmt: skip
    for i in range(3):
        rendered = render_sample(spec, int(shards[0].index[i]))["scene"].image
        assert bytes(shards[0].encoded[shards[0].offsets[i] : shards[0].offsets[i] + 4]) == b"\x89PNG"
        assert np.array_equal(shards[0].image(i), rendered)


def test_a_corrupt_shard_is_reported_and_the_others_still_read(tmp_path):
    generate_dataset("tello", 10, tmp_path / "e", seed=2, workers=1, shard_size=4, progress=False)
    _, index = all_samples(tmp_path / "e")
    files = [s["file"] for split in index["splits"].values() for s in split]
    broken = tmp_path / "e" / files[0]
    broken.write_bytes(broken.read_bytes()[:500])
    with pytest.raises(DatasetFormatError, match=files[0]):
        read_shard(broken)
    assert all(len(read_shard(tmp_path / "e" / f)) > 0 for f in files[1:])


def test_bad_requests_fail_before_rendering(tmp_path):
    with pytest.raises(ValueError, match="output directory path is empty"):
        generate_dataset("tello", 4, "", progress=False)
    with pytest.raises(ValueError, match="unknown drone"):
        generate_dataset("no_such_drone", 4, tmp_path / "x", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(ValueError, match="not an empty directory"):
        generate_dataset("tello", 4, tmp_path / "full", progress=False)
    with pytest.raises(ValueError, match="focal length"):
        generate_dataset("tello", 4, tmp_path / "y", K=np.zeros((3, 3)), progress=False)
    with pytest.raises(ValueError, match="split fractions"):
        plan_jobs(10, (0.5, 0.5, 0.5), 4)
    with pytest.raises(DatasetFormatError, match="not a drone_pose dataset folder"):
        read_index(tmp_path)
