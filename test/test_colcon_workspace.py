"""The README's "use it in a ROS 2 workspace" path: `colcon build` in a fresh workspace, then what
`ros2 run` and `ros2 launch` rely on in the install space, and the tracker started from it.

The workspace lives under pytest's tmp_path (build/, install/ and log/ never land in the repository);
src/drone_pose holds the files a clone would have (tracked plus untracked, not ignored: no .venv).
colcon runs under this interpreter, so the install space uses the same rclpy as the rest of the suite.
The build is a plain `colcon build` as in the README: with --symlink-install the installed package
points back at the sources and share_dir() resolves to the checkout, which is not what users get.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from .ros.conftest import spin_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "drone_pose"
SHARE_FOLDERS = ("launch", "config", "models")
EXECUTABLES = ("tracker_node", "fusion_node", "drone-pose")


def source_files() -> list[str]:
    """Files a clone of this checkout would hold, relative to the repository root: git's tracked and
    untracked-but-not-ignored files; outside a git checkout, every file but the usual outputs."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = listed.split("\0")
    except (OSError, subprocess.CalledProcessError):
        skipped = {".git", ".venv", "build", "install", "log", "__pycache__", ".pytest_cache", ".ruff_cache"}
        names = [
            path.relative_to(REPO_ROOT).as_posix()
            for path in REPO_ROOT.rglob("*")
            if not skipped & set(path.relative_to(REPO_ROOT).parts)
        ]
    return sorted({name for name in names if name and (REPO_ROOT / name).is_file()})


def in_install_space(workspace: Path, *command: str) -> list[str]:
    """`command` run by bash after `source install/setup.bash` (the README's step)."""
    return ["bash", "-c", 'source "$0" && exec "$@"', str(workspace / "install" / "setup.bash"), *command]


def install_space_environment(workspace: Path) -> dict[str, str]:
    """The test's ROS environment (domain, log dir, AMENT_PREFIX_PATH = the venv, like a sourced
    /opt/ros) without any PYTHONPATH or earlier colcon workspace; colcon's setup.bash adds ours."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "COLCON_PREFIX_PATH", "PYTEST_CURRENT_TEST")
    }
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    environment["COLCON_HOME"] = str(workspace / ".colcon_home")  # no user defaults (e.g. symlink-install)
    return environment


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """ws/ with src/drone_pose (a copy of the checkout's files) built by `colcon build`."""
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    assert colcon, "colcon is missing: requirements/dev.txt installs colcon-common-extensions"
    repo_outputs_before = {name: (REPO_ROOT / name).exists() for name in ("build", "install", "log")}
    root = tmp_path_factory.mktemp("colcon") / "ws"
    source = root / "src" / PACKAGE
    for name in source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    started = time.monotonic()
    result = subprocess.run(
        [colcon, "build", "--packages-select", PACKAGE, "--event-handlers", "desktop_notification-"],
        cwd=root,
        env=install_space_environment(root),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, (
        f"colcon build failed ({time.monotonic() - started:.1f} s)\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}"
    )
    for name, existed in repo_outputs_before.items():
        assert existed or not (REPO_ROOT / name).exists(), f"colcon wrote {name}/ into the repository"
    return root


def test_install_space_has_what_ros2_run_and_launch_need(workspace):
    prefix = workspace / "install" / PACKAGE
    share = prefix / "share" / PACKAGE
    for executable in EXECUTABLES:
        path = prefix / "lib" / PACKAGE / executable
        assert path.is_file(), f"ros2 run needs lib/{PACKAGE}/{executable}"
        assert os.access(path, os.X_OK), path
        shebang = path.read_text().splitlines()[0]
        assert shebang.startswith("#!"), shebang
        assert "python" in shebang, shebang
    assert not (prefix / "bin").exists(), "console scripts belong in lib/drone_pose (setup.cfg)"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    assert (share / "package.xml").read_bytes() == (REPO_ROOT / "package.xml").read_bytes()
    expected = {name for name in source_files() if name.split("/")[0] in SHARE_FOLDERS}
    installed = {
        path.relative_to(share).as_posix()
        for folder in SHARE_FOLDERS
        for path in (share / folder).rglob("*")
        if path.is_file()
    }
    assert installed == expected
    for name in (
        "launch/tracker.launch.py",
        "launch/multi_camera.launch.py",
        "config/tracker.yaml",
        "config/fastdds_shm.xml",
        "config/rviz/drone_pose.rviz",
        "models/drones/m2ed.yaml",
        "models/drones/tello.obj",
        "models/checkpoints/m2ed_hrnet_lite.pt",
        "models/checkpoints/tello_hrnet_small.pt",
    ):
        assert name in installed
        assert (share / name).read_bytes() == (REPO_ROOT / name).read_bytes(), name
    assert (prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
            / PACKAGE / "resources.py").is_file()  # fmt: skip


def test_install_space_resolves_its_own_package_and_share(workspace):
    """After sourcing install/setup.bash: drone_pose comes from the install space, share_dir() is
    install/drone_pose/share/drone_pose, and the ament index finds the executables where ros2 run and
    launch_ros look (<prefix>/lib/<package>/<executable>)."""
    code = (
        "import json, drone_pose, drone_pose.resources as r\n"
        "from ament_index_python.packages import get_package_prefix, get_package_share_directory\n"
        "from drone_pose.ros.launch_plan import tracker_plan\n"
        "node = tracker_plan().nodes[0]\n"
        "print(json.dumps({'module': drone_pose.__file__, 'share': str(r.share_dir()),\n"
        "  'prefix': get_package_prefix('drone_pose'),\n"
        "  'ament_share': get_package_share_directory('drone_pose'),\n"
        "  'package': node.package, 'executable': node.executable}))"
    )
    result = subprocess.run(
        in_install_space(workspace, sys.executable, "-c", code),
        cwd=workspace,
        env=install_space_environment(workspace),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    prefix = (workspace / "install" / PACKAGE).resolve()
    share = prefix / "share" / PACKAGE
    assert Path(found["module"]).resolve().is_relative_to(prefix), found["module"]
    assert Path(found["share"]).resolve() == share
    assert Path(found["ament_share"]).resolve() == share
    assert Path(found["prefix"]).resolve() == prefix
    assert found["package"] == PACKAGE  # what launch_ros resolves: <prefix>/lib/<package>/<executable>
    executable = prefix / "lib" / PACKAGE / found["executable"]
    assert executable.is_file()
    assert os.access(executable, os.X_OK)


def test_installed_drone_pose_launch_uses_the_installed_config(workspace):
    """The installed `drone-pose` (ros2 run drone_pose drone-pose) runs, and its launch plan, which
    tracker.launch.py shares, takes tracker.yaml and the Fast DDS profile from the install space."""
    prefix = workspace / "install" / PACKAGE
    config = (prefix / "share" / PACKAGE / "config").resolve()
    result = subprocess.run(
        in_install_space(
            workspace, str(prefix / "lib" / PACKAGE / "drone-pose"), "launch", "tracker", "--dry-run"
        ),
        cwd=workspace,
        env=install_space_environment(workspace),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"FASTDDS_DEFAULT_PROFILES_FILE={config / 'fastdds_shm.xml'}", lines
    command = lines[1].split()
    assert command[command.index("--params-file") + 1] == str(config / "tracker.yaml"), command


def test_tracker_node_from_the_install_space_starts_and_reports(workspace, tmp_path):
    """`ros2 run drone_pose tracker_node --ros-args -p device:=cpu` without ros2cli: the installed
    executable after sourcing install/setup.bash. It joins the graph as /drone_pose_tracker and its
    /diagnostics name the shipped checkpoint from the install space."""
    tracker_executable = workspace / "install" / PACKAGE / "lib" / PACKAGE / "tracker_node"
    share = (workspace / "install" / PACKAGE / "share" / PACKAGE).resolve()
    log = tmp_path / "tracker.log"
    context = Context()
    rclpy.init(context=context)
    node = Node("test_colcon_workspace", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    reports: list[DiagnosticArray] = []
    node.create_subscription(DiagnosticArray, "/diagnostics", reports.append, QoSProfile(depth=10))
    with log.open("w") as output:
        tracker = subprocess.Popen(
            in_install_space(workspace, str(tracker_executable), "--ros-args", "-p", "device:=cpu"),
            cwd=workspace,
            env=install_space_environment(workspace),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tracker_values() -> dict[str, str]:
        for report in reversed(reports):
            for status in report.status:
                if status.hardware_id == "/drone_pose_tracker":
                    return {kv.key: kv.value for kv in status.values}
        return {}

    try:
        reported = spin_until(
            executor, lambda: bool(tracker_values()) or tracker.poll() is not None, timeout_s=60.0
        )
        assert reported, f"no diagnostics from the tracker:\n{log.read_text()}"
        assert tracker.poll() is None, f"the tracker exited:\n{log.read_text()}"
        assert ("drone_pose_tracker", "/") in node.get_node_names_and_namespaces()
        values = tracker_values()
        assert values["lifecycle_state"] == "active", values
        assert values["device"] == "cpu", values
        assert Path(values["model"]).resolve() == share / "models" / "checkpoints" / "m2ed_hrnet_lite.pt"
    finally:
        if tracker.poll() is None:
            tracker.send_signal(signal.SIGINT)
            try:
                tracker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(tracker.pid, signal.SIGKILL)
                tracker.wait()
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        context.try_shutdown()
    assert "configured: model" in log.read_text()
    assert tracker.returncode == 0, log.read_text()
