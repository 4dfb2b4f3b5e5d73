"""`drone-pose bench multiview` prints JSON with a row per (views, groups): times and errors."""

from __future__ import annotations

import json

from drone_pose.cli import main


def test_bench_multiview_prints_side_by_side_figures(capsys):
    assert main(["bench", "multiview", "--views", "2", "3", "--groups", "1", "4", "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "multiview"
    assert [(row["views"], row["groups"]) for row in report["rows"]] == [(2, 1), (2, 4), (3, 1), (3, 4)]
    for row in report["rows"]:
        for key in ("single_view_solves_ms", "multiview_pnp_ms", "fuse_ms"):
            assert row[key] > 0
    # fusing several views beats the single views on the same noisy keypoints
    four_groups = [row for row in report["rows"] if row["groups"] == 4]
    for row in four_groups:
        assert row["fused_position_error_mm_median"] < row["single_view_position_error_mm_median"]
