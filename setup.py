"""ament_python packaging for drone_pose; also installable with `pip install -e .`."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "drone_pose"
ROOT = Path(__file__).resolve().parent


def share_files(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under `folder` into share/drone_pose/<folder>."""
    entries: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(ROOT)
            entries.setdefault(f"share/{PACKAGE}/{relative.parent}", []).append(str(relative))
    return list(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_files("launch"),
        *share_files("config"),
        *share_files("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="drone_pose developers",
    maintainer_email="drone-pose@example.com",
    description="Real-time 6-DoF drone pose tracking from camera images.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "drone-pose = drone_pose.cli:main",
            "tracker_node = drone_pose.ros.tracker_node:main",
            "fusion_node = drone_pose.ros.fusion_node:main",
        ],
    },
)
