"""`drone-pose keypoint-budget`: metrics of ground-truth keypoints plus Gaussian noise through the PnP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drone_pose.cli import main
from drone_pose.data.dataset import ShardDataset
from drone_pose.data.generate import generate_dataset
from drone_pose.evaluation.keypoint_budget import keypoint_budget
from drone_pose.evaluation.reports import METRIC_COLUMNS


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    for drone in ("m2ed", "tello"):
        generate_dataset(drone, 40, root / drone, seed=5, workers=1, fractions=(0, 0, 1), progress=False)
    return root


def test_exact_keypoints_score_perfectly_and_noise_costs_accuracy(datasets):
    summary = keypoint_budget(str(datasets / "m2ed"), sigmas_px=[0.0, 0.5, 3.0])
    exact, mild, strong = summary["rows"]
    assert summary["drone"] == "m2ed"
    assert summary["count"] == 40
    assert exact["keypoint_px"] == 0.0
    assert all(exact[c] == 100.0 for c in ("ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5"))
    assert exact["NPE"] < 1e-6
    # per-axis std sigma -> mean distance ~1.25 sigma (Rayleigh)
    assert 1.0 * 3.0 < strong["keypoint_px"] < 1.5 * 3.0
    assert strong["ACC2"] < mild["ACC2"] < exact["ACC2"]
    assert strong["NPE"] > mild["NPE"] > 0


def test_the_small_drone_needs_more_accurate_keypoints(datasets):
    m2ed = keypoint_budget(str(datasets / "m2ed"), sigmas_px=[0.5])["rows"][0]
    tello = keypoint_budget(str(datasets / "tello"), sigmas_px=[0.5])["rows"][0]
    assert tello["ADD5"] < m2ed["ADD5"] - 30.0
    assert tello["ACC5"] < m2ed["ACC5"]


def test_cli_prints_the_table_and_writes_json(datasets, tmp_path, capsys):
    out = tmp_path / "budget.json"
    args = ["keypoint-budget", "--data", str(datasets / "tello"), "--sigmas", "0", "1", "--limit", "10"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| noise std px | keypoint px | " + " | ".join(METRIC_COLUMNS))
    document = json.loads(out.read_text())
    assert document["drone"] == "tello"
    assert document["count"] == 10
    assert [row["sigma_px"] for row in document["rows"]] == [0.0, 1.0]


def test_bad_arguments_are_clear(datasets):
    with pytest.raises(ValueError, match="noise stds"):
        keypoint_budget(str(datasets / "m2ed"), sigmas_px=[-1.0])
    with pytest.raises(ValueError, match="unknown split"):
        keypoint_budget(str(datasets / "m2ed"), split="dev")


def test_labels_match_the_samples_without_decoding_images(datasets):
    dataset = ShardDataset(datasets / "tello", "test")
    labels = dataset.labels()
    assert labels["keypoints"].shape == (40, 9, 2)
    for i in (0, 17, 39):
        sample = dataset[i]
        for key in ("keypoints", "R", "t"):
            assert np.allclose(labels[key][i], sample[key].numpy()), key
