"""Lifecycle endurance over real DDS: 20 configure -> activate -> frames -> deactivate -> cleanup cycles
with bounded memory growth of the tracker process."""

from __future__ import annotations

import pytest

from drone_pose.ros.soak_benchmark import run_lifecycle_soak

from ..tiny_models import tiny_checkpoint

PERMISSIVE = (  # the untrained test network: accept every pose
    "max_reprojection_rms_px:=1000000.0",
    "max_position_std_m:=1000000.0",
    "min_keypoint_confidence:=-1.0",
    "keypoint_confidence_power:=0.0",
)


@pytest.mark.ros
def test_twenty_lifecycle_cycles_with_bounded_memory(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    report = run_lifecycle_soak(str(checkpoint), cycles=20, warmup_cycles=5, parameters=PERMISSIVE)
    assert [r["poses"] >= 2 for r in report["per_cycle"]] == [True] * 20  # the node works in every cycle
    memory = report["tracker_rss_mb"]
    assert memory["end"] - memory["after_warmup"] < 30.0, report["per_cycle"]
    assert memory["growth_after_warmup_percent"] < 5.0, report["per_cycle"]
