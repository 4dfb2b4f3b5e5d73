"""`drone-pose bench gmm` prints JSON with a row per (device, M): times and the convergence gap."""

from __future__ import annotations

import json

import torch

from drone_pose.bench.gmm import frame_heatmaps
from drone_pose.cli import main


def test_bench_gmm_prints_a_row_per_component_count(capsys):
    assert main(["bench", "gmm", "--components", "1", "3", "--devices", "cpu", "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "gmm"
    assert report["heatmaps_per_call"] == [1, 4, 9]
    assert report["heatmap_size"] == [60, 80]
    assert [(row["device"], row["components"]) for row in report["rows"]] == [("cpu", 1), ("cpu", 3)]
    for row in report["rows"]:
        assert 0 < row["ms_min"] <= row["ms_median"] <= row["ms_p95"]
        assert row["valid"] == 1.0
    # one component is converged after the first step; more move on a little after 10
    assert report["rows"][0]["gap_to_100_iterations_nats_mean"] == 0.0
    assert 0.0 <= report["rows"][1]["gap_to_100_iterations_nats_mean"] < 0.5


def test_benchmark_heatmaps_peak_where_a_network_would():
    heatmaps = frame_heatmaps(2, 4, 9, seed=1)
    assert heatmaps.shape == (2, 4, 9, 60, 80)
    peaks = heatmaps.flatten(-2).amax(-1)
    assert ((peaks > 0.8) & (peaks < 1.1)).all()
    assert (heatmaps.flatten(-2).amin(-1) < 0).any()  # a background around 0, as a network's
    assert torch.equal(heatmaps, frame_heatmaps(2, 4, 9, seed=1))
