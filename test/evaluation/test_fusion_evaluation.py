"""`drone-pose eval` on a multi-camera dataset: fused poses next to every single view, report files."""

from __future__ import annotations

import json

import cv2
import pytest

from drone_pose.cli import main
from drone_pose.data.generate import generate_dataset
from drone_pose.data.rig_poses import RigConfig
from drone_pose.errors import UserError
from drone_pose.evaluation.fusion_evaluation import evaluate_fusion


@pytest.fixture(scope="module")
def rig_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion_evaluation")
    generate_dataset(
        "m2ed",
        6,
        root / "data",
        seed=11,
        workers=1,
        fractions=(0.0, 0.0, 1.0),
        progress=False,
        rig=RigConfig(3),
    )
    return root


def test_fused_poses_beat_single_views_with_the_shipped_network(rig_dataset, capsys):
    out = rig_dataset / "report"
    arguments = [
        "eval",
        "--checkpoint",
        "models/checkpoints/m2ed_hrnet_lite.pt",
        "--data",
        str(rig_dataset / "data"),
    ]
    assert main([*arguments, "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| fused, 3 cameras |" in printed
    assert "| camera 2 alone |" in printed
    summary = json.loads(printed[printed.index("{") :])
    rows = {row["label"]: row for row in summary["fusion"]["rows"]}
    assert set(rows) == {
        "camera 0 alone", "camera 1 alone", "camera 2 alone", "most certain single view",
        "fused, 1 camera", "fused, 2 cameras", "fused, 3 cameras",
    }  # fmt: skip
    fused, single = rows["fused, 3 cameras"], rows["camera 0 alone"]
    assert fused["views_used"] > 2.5
    assert fused["position_cm_median"] < single["position_cm_median"]
    assert fused["ADD2"] >= single["ADD2"]
    assert rows["fused, 1 camera"]["ADD5"] == pytest.approx(single["ADD5"])  # one camera: that camera
    document = json.loads((out / "fusion.json").read_text())
    assert document["groups"] == 6
    assert "| fused, 2 cameras |" in (out / "fusion.md").read_text()
    assert cv2.imread(str(out / "fusion.png")) is not None


def test_a_single_camera_dataset_is_refused_by_the_fusion_evaluation(tmp_path):
    generate_dataset("m2ed", 2, tmp_path / "single", workers=1, width=96, height=72, progress=False)
    with pytest.raises(UserError, match="single-camera dataset"):
        evaluate_fusion(None, tmp_path / "single")
