"""Test-wide ROS 2 environment: set before anything imports rclpy.

Every pytest process (each xdist worker too) reserves its own ROS_DOMAIN_ID through
ros-domain-coordinator, logs to a temporary ROS_LOG_DIR, keeps discovery on localhost and uses the
project's Fast DDS shared-memory profile. Child processes started by tests inherit all of it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_session_resources = contextlib.ExitStack()


def pytest_configure(config) -> None:
    log_dir = _session_resources.enter_context(tempfile.TemporaryDirectory(prefix="drone_pose_roslog_"))
    os.environ["ROS_LOG_DIR"] = log_dir
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO_ROOT / "config" / "fastdds_shm.xml")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if sys.prefix not in prefixes:
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join([sys.prefix, *prefixes])
    try:
        from domain_coordinator import domain_id
    except ImportError:  # a system ROS 2 without the coordinator: fall back to the process id
        os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
    else:
        os.environ["ROS_DOMAIN_ID"] = str(_session_resources.enter_context(domain_id()))


def pytest_unconfigure(config) -> None:
    _session_resources.close()


@pytest.fixture(scope="session")
def rig_bag(tmp_path_factory) -> Path:
    """A 3-camera M2ED flight bag (drone-pose synth-bag --cameras 3): 6 groups, 1.2 s at 5 Hz, 160x120."""
    from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag

    bag = tmp_path_factory.mktemp("rig_bag") / "flight"
    spec = FlightBagSpec(seconds=1.2, rate_hz=5.0, cameras=3, seed=3, width=160, height=120)
    write_flight_bag(bag, spec, workers=1, progress=False)
    return bag
