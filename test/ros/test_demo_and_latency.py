"""`drone-pose demo` and `drone-pose bench tracker` end to end, over real DDS between processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from drone_pose.inference.checkpoint import default_checkpoint
from drone_pose.ros.demo import run_demo

from ..tiny_models import tiny_checkpoint

pytestmark = pytest.mark.ros


def test_demo_accuracy_over_dds_matches_eval_bag(tmp_path):
    """The shipped default checkpoint through the tracker node: every pose received over DDS is the
    pose eval-bag computes offline for that frame, so the two accuracy tables agree."""
    summary = run_demo(tmp_path / "demo", seconds=3.0, rate_hz=10.0, log=lambda line: None)
    assert summary["frames"] == 30
    assert summary["poses_over_dds"] >= 10, summary["tracker"]
    match = summary["agreement"]
    assert match["frames"] == summary["poses_over_dds"]
    assert match["only_over_dds"] == 0  # the tracker never publishes a pose eval-bag rejects
    assert match["max_translation_difference_mm"] < 0.5
    assert match["max_rotation_difference_deg"] < 0.05
    dds, offline = summary["metrics_over_dds"], summary["metrics_eval_bag_valid_frames"]
    if match["only_offline"] == 0:  # the same frames: the same table
        for key in ("ACC5", "ADD5", "Proj5"):
            assert dds[key] == pytest.approx(offline[key], abs=1e-6)
    tracker = summary["tracker"]
    processed = tracker["frames_processed"]
    assert processed + tracker["frames_dropped"] == 30
    assert summary["poses_over_dds"] + sum(tracker["rejections"].values()) == processed
    for name in ("recorded_tracker_output", "eval_bag_report"):
        assert (tmp_path / "demo" / summary["files"][name].split("/demo/")[-1]).exists()
    assert summary["checkpoint"] == str(default_checkpoint("m2ed"))


def test_latency_benchmark_prints_json(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    result = subprocess.run(
        [
            sys.executable, "-m", "drone_pose.cli", "bench", "tracker", "--checkpoint", str(checkpoint),
            "--seconds", "3", "--rate", "10",
            "--param", "max_reprojection_rms_px:=1000000.0", "--param", "max_position_std_m:=1000000.0",
            "--param", "min_keypoint_confidence:=-1.0",
            "--param", "keypoint_confidence_power:=0.0",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["frames_sent"] == 30
    assert report["poses_received"] >= 15
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]
    tracker = report["tracker"]
    assert tracker["frames_processed"] + tracker["frames_dropped"] == 30


def test_fusion_demo_fuses_three_cameras_over_dds_as_eval_bag_does(tmp_path):
    """`drone-pose demo --cameras 3`: the fusion node's poses over DDS are eval-bag's fused poses,
    and the fusion beats every single camera on this flight."""
    result = subprocess.run(
        [
            sys.executable, "-m", "drone_pose.cli", "demo", "--cameras", "3", "--seconds", "2",
            "--out", str(tmp_path / "demo"),
        ],
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused, 3 cameras" in result.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["cameras"] == ["camera0", "camera1", "camera2"]
    assert summary["over_dds"]["groups"] == 10
    node = summary["fusion_node"]
    assert summary["over_dds"]["poses"] >= 5, node  # the others dropped (newest group only) on a busy CPU
    assert summary["over_dds"]["poses"] + int(node["groups_dropped"]) >= 8, node
    match = summary["agreement"]
    assert match["frames"] == summary["over_dds"]["poses"]
    assert match["only_over_dds"] == 0
    assert match["max_translation_difference_mm"] < 0.01
    rows = {row["label"]: row for row in summary["eval_bag_rows"]}
    fused = rows["fused, 3 cameras"]
    singles = [rows[f"camera{v} alone"] for v in range(3)]
    assert fused["ADD2"] >= max(row["ADD2"] for row in singles), rows
    assert summary["over_dds"]["position_error_cm"]["median"] < 1.0


def test_fusion_benchmark_prints_json():
    result = subprocess.run(
        [sys.executable, "-m", "drone_pose.cli", "bench", "fusion", "--seconds", "3", "--rate", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["groups_sent"] == 12
    assert report["cameras"] == ["camera0", "camera1", "camera2"]
    assert report["poses_received"] >= 8, report
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]
    fusion = report["fusion"]
    assert fusion["groups_processed"] + fusion["groups_dropped"] >= 12
    assert 2.0 <= fusion["views_used_mean"] <= 3.0
    assert fusion["resident_memory_mb_end"] > 0
