"""`drone-pose synth`: deterministic, split, sharded datasets that read back; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drone_pose.cli import main
from drone_pose.data.generate import GenerationSpec, generate_dataset, plan_jobs, render_sample
from drone_pose.data.poses import PoseSamplingConfig
from drone_pose.data.shards import SHARD_KEYS, DatasetFormatError, read_index, read_shard
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


def test_an_interrupted_synth_resumes_to_the_uninterrupted_dataset(tmp_path, monkeypatch):
    """Interrupted after two shards (a debris file and a damaged shard added), the folder explains
    itself to readers, refuses other settings untouched, and the same call finishes it into the
    dataset an uninterrupted run gives."""
    import drone_pose.data.generate as generate
    from drone_pose.data.synth_progress import SynthFolderError

    arguments = {"seed": 3, "workers": 1, "shard_size": 2, "width": 96, "height": 72, "progress": False}
    full = generate_dataset("tello", 9, tmp_path / "full", **arguments)
    render, calls = generate._render_shard, []

    def interrupted_after_two(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(job)

    monkeypatch.setattr(generate, "_render_shard", interrupted_after_two)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("tello", 9, cut, **arguments)
    monkeypatch.undo()
    (cut / "train-00002.npz").write_bytes((cut / "train-00000.npz").read_bytes()[:300])  # a damaged shard
    (cut / "train-00003.npz.partial").write_bytes(b"half a shard")
    with pytest.raises(DatasetFormatError, match="interrupted") as unfinished:
        read_index(cut)
    command = "drone-pose synth --drone tello --count 9 --seed 3 --shard-size 2 --splits 0.8 0.1 0.1 "
    command += f"--width 96 --height 72 --out {cut}"
    assert str(unfinished.value).endswith(command)
    files = sorted(p.name for p in cut.iterdir())
    with pytest.raises(SynthFolderError, match=r"other settings \(differing: seed\)"):
        generate_dataset("tello", 9, cut, **{**arguments, "seed": 4})
    assert sorted(p.name for p in cut.iterdir()) == files

    resumed = generate_dataset("tello", 9, cut, **arguments)
    assert resumed["generation"]["resumed_shards"] == 2
    assert {k: v for k, v in resumed.items() if k != "generation"} == {
        k: v for k, v in full.items() if k != "generation"
    }
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())
    for split in full["splits"].values():
        for entry in split:
            a, b = read_shard(tmp_path / "full" / entry["file"]), read_shard(cut / entry["file"])
            assert all(np.array_equal(getattr(a, key), getattr(b, key)) for key in SHARD_KEYS)
    with pytest.raises(SynthFolderError, match="already holds a finished dataset"):
        generate_dataset("tello", 9, cut, **arguments)
