"""Locating the package's data folders (config/, models/, launch/) in a checkout or an install."""

from __future__ import annotations

from pathlib import Path

PACKAGE_NAME = "drone_pose"


def share_dir() -> Path:
    """Folder that holds config/, models/ and launch/.

    In a source checkout or an editable install this is the repository root; in a colcon/ament
    install it is ``share/drone_pose`` from the ament index (ament_index_python, not rclpy).
    """
    source_root = Path(__file__).resolve().parent.parent
    if (source_root / "models" / "drones").is_dir():
        return source_root
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError as error:
        raise FileNotFoundError(
            f"cannot find the {PACKAGE_NAME} data folders: no models/ next to the package at "
            f"{source_root} and ament_index_python is not importable"
        ) from error
    return Path(get_package_share_directory(PACKAGE_NAME))


def models_dir() -> Path:
    """The models/ folder (drones/ and checkpoints/)."""
    return share_dir() / "models"


def config_dir() -> Path:
    """The config/ folder (tracker.yaml, Fast DDS profiles, RViz and training configs)."""
    return share_dir() / "config"
