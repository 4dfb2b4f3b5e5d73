"""The package as users meet it: ament_python metadata, installed data, the CLI, no rclpy in the algorithm."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import drone_pose

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_package_xml_is_an_ament_python_package():
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "drone_pose"
    assert root.findtext("export/build_type") == "ament_python"
    exec_depends = {element.text for element in root.findall("exec_depend")}
    for dependency in (
        "rclpy",
        "sensor_msgs",
        "geometry_msgs",
        "tf2_msgs",
        "visualization_msgs",
        "diagnostic_msgs",
        "launch",
        "launch_ros",
        "python3-torch",
        "python3-numpy",
        "python3-opencv",
        "python3-yaml",
    ):
        assert dependency in exec_depends
    assert (REPO_ROOT / "resource" / "drone_pose").is_file()
    assert (REPO_ROOT / "interfaces" / "COLCON_IGNORE").is_file(), "colcon must never build our tf2_msgs"


def test_setup_installs_share_folders():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, setuptools, json, sys\n"
            "captured = {}\nsetuptools.setup = lambda **kw: captured.update(kw)\n"
            "runpy.run_path('setup.py', run_name='__main__')\n"
            "print(json.dumps({key: captured[key] for key in ('data_files', 'entry_points')}))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    spec = json.loads(result.stdout)
    installed = {path for _, paths in spec["data_files"] for path in paths}
    for path in (
        "resource/drone_pose",
        "package.xml",
        "config/fastdds_shm.xml",
        "models/drones/m2ed.yaml",
        "models/drones/m2ed.obj",
        "models/drones/tello.yaml",
        "models/drones/tello.obj",
    ):
        assert path in installed
    destinations = {destination for destination, _ in spec["data_files"]}
    assert "share/ament_index/resource_index/packages" in destinations
    assert "share/drone_pose/models/drones" in destinations
    assert "drone-pose = drone_pose.cli:main" in spec["entry_points"]["console_scripts"]


def test_the_algorithm_never_imports_rclpy():
    """Import every module outside drone_pose.ros in a fresh interpreter; rclpy must stay unloaded."""
    modules = [
        info.name
        for info in pkgutil.walk_packages(drone_pose.__path__, prefix="drone_pose.")
        if not info.name.startswith("drone_pose.ros")
    ]
    assert {"drone_pose.geometry.metrics", "drone_pose.drones", "drone_pose.cli"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'rclpy' or m.startswith('rclpy.'))\n"
        "assert not loaded, loaded\n"
        "print('ok', len(sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


# The layers, lowest first: a module may import its own package and lower layers only.
LAYERS: dict[str, int] = {
    "resources": 0,
    "errors": 0,
    "atomic_files": 1,  # raises errors.OutputPathError
    "geometry": 1,
    "drones": 1,
    "data": 2,
    "nets": 2,
    "pnp": 2,
    "render": 1,  # differentiable silhouettes and pixel grids (torch only; nets reads its grids)
    "inference": 3,
    "bags": 3,
    "fusion": 4,  # multi-camera fusion (uses inference)
    "evaluation": 5,
    "train": 6,
    "bench": 7,
    "ros": 8,
    "cli": 9,
}


def imported_layers(path: Path) -> set[str]:
    """The drone_pose subpackages (or top-level modules) a source file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the layering test reads absolute ones)"
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "drone_pose" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_layers_import_only_lower_layers():
    package = REPO_ROOT / "drone_pose"
    layers = {path.name.removesuffix(".py") for path in package.iterdir() if path.name != "__init__.py"}
    assert layers - {"__pycache__"} == set(LAYERS), "every folder under drone_pose/ is a named layer"
    violations = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if len(relative.parts) == 1 and relative.name == "__init__.py":
            continue
        own = relative.parts[0].removesuffix(".py")
        for layer in imported_layers(path):
            if layer != own and LAYERS[layer] >= LAYERS[own]:
                violations.append(f"{relative} imports drone_pose.{layer}")
    assert not violations, violations


def test_cli_lists_the_drone_models():
    result = subprocess.run(
        [sys.executable, "-m", "drone_pose.cli", "models"], capture_output=True, text=True, check=True
    )
    models = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert models["m2ed"]["diagonal_m"] == 0.354
    assert len(models["tello"]["keypoints"]) == 9
