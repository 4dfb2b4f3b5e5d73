"""`drone-pose bench net` prints the JSON a user reads: counts, GFLOPs, timings per architecture."""

from __future__ import annotations

import json

import pytest

from drone_pose.cli import main


def test_bench_net_prints_figures_per_architecture(capsys):
    assert main(["bench", "net", "--architectures", "hrnet_lite", "--devices", "cpu", "--repeats", "1",
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


def test_bench_net_rejects_unknown_architectures():
    with pytest.raises(ValueError, match="unknown architectures"):
        main(["bench", "net", "--architectures", "resnet50"])
