"""`drone-pose eval`: the real inference path over a dataset split, the papers' table, report files."""

from __future__ import annotations

import json

import cv2
import pytest

from drone_pose.cli import main
from drone_pose.data.generate import generate_dataset
from drone_pose.drones import load_drone
from drone_pose.evaluation.reports import METRIC_COLUMNS
from drone_pose.inference.checkpoint import make_checkpoint, save_checkpoint
from drone_pose.nets.build import build_network


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    generate_dataset(
        "m2ed",
        10,
        root / "data",
        seed=4,
        workers=1,
        width=128,
        height=96,
        fractions=(0.4, 0.2, 0.4),
        progress=False,
    )
    checkpoint = make_checkpoint(build_network("hrnet_lite"), "hrnet_lite", load_drone("m2ed"), (128, 96))
    return root, save_checkpoint(checkpoint, root / "model.pt")


def test_eval_writes_the_table_plots_and_overlays(small_setup, capsys):
    root, checkpoint = small_setup
    out = root / "report"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(root / "data"),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("| model | " + " | ".join(METRIC_COLUMNS))
    assert "| drone size (px) | images | keypoint px |" in printed
    document = json.loads((out / "results.json").read_text())
    assert document["metrics"]["count"] == 4
    assert set(METRIC_COLUMNS) <= set(document["metrics"])
    assert len(document["per_keypoint_px"]) == 9
    by_size = document["by_size"]
    assert sum(row["count"] for row in by_size) == 4
    assert all(row["size_px"][0] < row["size_px"][1] for row in by_size)
    table_lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    assert len(table_lines) == 3 + 2 + len(by_size)
    samples = (out / "samples.csv").read_text().splitlines()
    assert len(samples) == 5
    valid_column = samples[0].split(",").index("valid")
    valid = sum(int(line.split(",")[valid_column]) for line in samples[1:])
    assert valid == round(4 * document["metrics"]["valid_fraction"])
    assert "Valid (what `tracker_node` publishes)" in (out / "results.md").read_text()
    for name in ("error_vs_distance", "error_vs_size", "per_keypoint", "overlay_00", "overlay_03"):
        image = cv2.imread(str(out / f"{name}.png"))
        assert image is not None, name
        assert image.shape[0] > 50


def test_eval_errors_are_clear(small_setup, tmp_path, capsys):
    root, checkpoint = small_setup
    assert (
        main(["eval", "--checkpoint", str(checkpoint), "--data", str(root / "data"), "--split", "dev"]) == 2
    )
    assert "unknown split 'dev'" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(tmp_path / "bad.pt"), "--data", str(root / "data")]) == 2
    assert "not a readable drone_pose checkpoint" in capsys.readouterr().err


def test_a_checkpoint_of_another_drone_is_refused(small_setup, tmp_path):
    """dataset.json says M2ED: eval and calibrate-covariance refuse a Tello checkpoint."""
    from drone_pose.evaluation.covariance_calibration import calibrate_checkpoint
    from drone_pose.evaluation.drone_pairing import DroneMismatchError
    from drone_pose.evaluation.split_evaluation import evaluate_checkpoint

    root, _ = small_setup
    tello = make_checkpoint(build_network("hrnet_lite"), "hrnet_lite", load_drone("tello"), (128, 96))
    path = save_checkpoint(tello, tmp_path / "tello.pt")
    with pytest.raises(DroneMismatchError, match=r"'m2ed'.*'tello'"):
        evaluate_checkpoint(path, root / "data", out=tmp_path / "report", device="cpu")
    with pytest.raises(DroneMismatchError, match=r"'m2ed'.*'tello'"):
        calibrate_checkpoint(path, root / "data", out=tmp_path / "calibrated.pt", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tello.pt"]
