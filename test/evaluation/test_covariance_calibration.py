"""`drone-pose calibrate-covariance`: scales fitted through the real inference path, stored in the
checkpoint, and applied by the estimator that loads it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drone_pose.cli import main
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.generate import generate_dataset
from drone_pose.geometry.pose_covariance import CovarianceScales
from drone_pose.inference.checkpoint import default_checkpoint, load_checkpoint
from drone_pose.inference.estimator import PoseEstimator


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    generate_dataset("m2ed", 24, root, seed=77, workers=1, fractions=(0, 1, 0), progress=False)
    return root


def test_calibration_stores_scales_the_estimator_applies(labelled, tmp_path, capsys):
    shipped = default_checkpoint("m2ed")
    before = shipped.read_bytes()
    out = tmp_path / "calibrated.pt"
    assert (
        main(
            [
                "calibrate-covariance",
                "--checkpoint",
                str(shipped),
                "--data",
                str(labelled),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert shipped.read_bytes() == before, "--out must leave the source checkpoint alone"
    assert summary["samples"] == 24
    scales = CovarianceScales.from_dict(summary["pose_covariance"])
    assert load_checkpoint(out)["pose_covariance"] == summary["pose_covariance"]
    assert scales.samples > 12
    assert 0.5 < summary["after"]["covariance_ratio"] < 2.0

    assert (scales.translation, scales.rotation) != (1.0, 1.0)

    sample = ShardDataset(labelled, "val")[0]
    image = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    K = sample["K"].double()
    raw = PoseEstimator.from_checkpoint(shipped, device="cpu", warm_up=False)
    raw.covariance_scales = CovarianceScales()
    calibrated = PoseEstimator.from_checkpoint(out, device="cpu", warm_up=False)
    assert calibrated.covariance_scales == scales
    expected = scales.apply(raw.estimate(image, K).covariance)
    torch.testing.assert_close(calibrated.estimate(image, K).covariance, expected)


def test_calibration_sets_the_flip_test_it_fits_the_scales_with(labelled, tmp_path, capsys):
    flipped, plain = tmp_path / "flipped.pt", tmp_path / "plain.pt"
    base = ["calibrate-covariance", "--data", str(labelled), "--device", "cpu", "--limit", "8"]
    assert (
        main(
            [
                *base,
                "--checkpoint",
                str(default_checkpoint("m2ed")),
                "--out",
                str(flipped),
                "--flip-test",
                "all",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["flip_test"] == "all"
    assert load_checkpoint(flipped)["input"]["flip_test"] == "all"
    assert PoseEstimator.from_checkpoint(flipped, device="cpu", warm_up=False).flip_test == "all"
    assert main([*base, "--checkpoint", str(flipped), "--out", str(plain), "--flip-test", "off"]) == 0
    assert "flip_test" not in load_checkpoint(plain)["input"]
    assert PoseEstimator.from_checkpoint(plain, device="cpu", warm_up=False).flip_test == "off"


def test_calibration_needs_samples(labelled, capsys):
    checkpoint = str(default_checkpoint("m2ed"))
    arguments = ["calibrate-covariance", "--checkpoint", checkpoint, "--data", str(labelled)]
    assert main([*arguments, "--split", "train"]) == 2
    assert "no readable shard in split 'train'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse exits on a bad argument
        main([*arguments, "--limit", "0"])
    assert refused.value.code == 2
    assert "--limit" in capsys.readouterr().err  # refused by the argument's type, before any work
