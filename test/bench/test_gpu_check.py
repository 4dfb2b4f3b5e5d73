"""The GPU check runs everywhere (a small CPU version here) and reports every section."""

from __future__ import annotations

import json

from drone_pose.bench.gpu_check import main


def test_quick_cpu_run_reports_every_section(capsys):
    assert main(["--quick", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu"
    for section in ("estimator", "networks", "pnp", "train"):
        assert "error" not in report[section], report[section]
        assert report["seconds"][section] >= 0
    assert report["estimator"]["m2ed_b1_graphs_off"]["valid"]
    assert report["pnp"]["24"]["converged"] == 1.0
    assert report["pnp"]["1"]["aten_ops"] > 0
    assert report["train"]["hrnet_lite_pose_b4"]["images_per_s"] > 0
