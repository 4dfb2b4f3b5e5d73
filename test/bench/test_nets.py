"""`drone-pose bench net` prints the JSON a user reads: counts, GFLOPs, timings per architecture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from drone_pose.bench.nets import KnownPoseHeatmaps, benchmark_scene
from drone_pose.bench.pnp_problems import pose_errors_deg_m
from drone_pose.cli import main
from drone_pose.drones import load_drone
from drone_pose.inference.estimator import PoseEstimator
from drone_pose.nets import build_network


def test_bench_net_prints_figures_per_architecture(capsys):
    assert main(["bench", "net", "--architectures", "hrnet_lite", "--devices", "cpu", "--repeats", "3",
                 "--batch", "2", "--width", "160", "--height", "128"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    (result,) = report["results"]
    assert result["architecture"] == "hrnet_lite"
    assert result["parameters_m"] == pytest.approx(0.544, abs=0.001)
    # 160x128 is a quarter of the pixels of 320x240 (1.15 GFLOPs) give or take padding to /32
    assert 0.2 < result["gflops"] < 0.4
    for key in ("latency_ms_batch1", "estimator_ms_batch1", "throughput_images_per_s_batch2"):
        assert result[key] > 0
    # the forced second pass runs the network twice: measured side by side, it must cost more
    assert result["estimator_two_pass_ms_batch1"] > result["estimator_ms_batch1"]
    assert report["machine"]["torch_threads"] >= 1


def test_bench_net_rejects_unknown_architectures(capsys):
    assert main(["bench", "net", "--architectures", "resnet50"]) == 2
    assert "unknown architectures ['resnet50']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("architecture", "width", "height"), [("hrnet_lite", 320, 240), ("hourglass", 160, 128)]
)
def test_the_estimator_benchmark_solves_the_known_pose(architecture, width, height):
    """The whole-estimator timing runs a random network but decodes a known pose's heatmaps, so PnP
    converges as on a trained network's output instead of iterating on random keypoints."""
    drone = load_drone("m2ed")
    K, R, t, keypoints = benchmark_scene(drone.keypoints, width, height)
    assert (keypoints > 0).all()
    assert (keypoints < [width, height]).all()
    network = KnownPoseHeatmaps(build_network(architecture), torch.from_numpy(keypoints))
    estimator = PoseEstimator(network, drone.keypoints, (width, height), device="cpu", warm_up=False)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    result = estimator.estimate(image, K)
    assert result.valid.all(), result.reasons
    rotation_deg, translation_m = pose_errors_deg_m(
        result.R, result.t, torch.from_numpy(R)[None], torch.from_numpy(t)[None]
    )
    assert rotation_deg.item() < 1.0
    assert translation_m.item() < 0.01 * np.linalg.norm(t)
