"""`drone-pose eval-bag`: offline, deterministic scoring of a bag against its ground truth."""

from __future__ import annotations

import json

import pytest
from rosbags.rosbag2 import Reader

from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.bags.frames import bag_drone
from drone_pose.cli import main

from ..tiny_models import tiny_checkpoint

TINY_NET = {
    "architecture": "hrnet",
    "heatmaps": 9,
    "stem_channels": 16,
    "stem_planes": 8,
    "stem_blocks": 1,
    "stages": [{"modules": 1, "blocks": [1, 1], "channels": [16, 32]}],
}


@pytest.fixture(scope="module")
def bag_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_bag")
    write_flight_bag(
        root / "flight", FlightBagSpec(seconds=1.0, rate_hz=10.0, seed=2), workers=1, progress=False
    )
    return root, tiny_checkpoint(root / "tiny.pt")


def test_eval_bag_scores_every_frame_and_writes_an_estimates_bag(bag_and_checkpoint, capsys):
    root, checkpoint = bag_and_checkpoint
    arguments = ["eval-bag", str(root / "flight"), "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main([*arguments, "--out", str(root / "a")]) == 0
    first = json.loads((root / "a" / "results.json").read_text())
    assert first["metrics"]["count"] == 10
    assert len((root / "a" / "frames.csv").read_text().splitlines()) == 11
    with Reader(root / "a" / "estimates") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    valid = round(first["metrics"]["valid_fraction"] * 10)
    assert counts["/overlay"] == 10
    assert counts["/pose"] == counts["/pose_with_covariance"] == counts["/tf"] == valid
    assert main([*arguments, "--out", str(root / "b")]) == 0
    second = json.loads((root / "b" / "results.json").read_text())
    assert first["metrics"] == second["metrics"]  # deterministic
    capsys.readouterr()


def test_eval_bag_bad_input(bag_and_checkpoint, tmp_path, capsys):
    root, checkpoint = bag_and_checkpoint
    arguments = ["eval-bag", str(root / "flight"), "--checkpoint", str(checkpoint), "--out", str(tmp_path)]
    assert main([*arguments, "--camera", "camera7"]) == 2
    assert "no /camera7/image_raw topic; check --camera" in capsys.readouterr().err


def test_a_checkpoint_of_another_drone_is_refused(bag_and_checkpoint, tmp_path):
    """The bag says it shows the M2ED: a Tello checkpoint is refused, naming both drones."""
    from drone_pose.evaluation.bag_evaluation import evaluate_bag
    from drone_pose.evaluation.drone_pairing import DroneMismatchError

    root, _ = bag_and_checkpoint
    tello = tiny_checkpoint(tmp_path / "tello.pt", drone="tello")
    with pytest.raises(DroneMismatchError, match=r"'m2ed'.*'tello'"):
        evaluate_bag(root / "flight", tello, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_eval_bag_without_checkpoint_uses_the_shipped_model_of_the_bags_drone(tmp_path, capsys):
    """The README's command: `drone-pose eval-bag BAG --out DIR`, the drone read from the bag's metadata."""
    bag = tmp_path / "flight"
    common = ["--seconds", "0.5", "--rate", "4", "--width", "160", "--height", "120", "--workers", "1"]
    assert main(["synth-bag", "--drone", "tello", "--out", str(bag), *common]) == 0
    capsys.readouterr()
    assert bag_drone(bag) == "tello"
    assert main(["eval-bag", str(bag), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["label"] == "tello_hrnet_small.pt on flight/camera"
    assert results["metrics"]["count"] == 2
