"""A reader for the public UAVA dataset layout (exocentric colour views), as the common Dataset.

Layout (as published by the dataset's authors; names are case-sensitive):
    ROOT/<drone>/exocentric/colour/<building>/<row>_<date>_<frame>_<x>_<view>_<type>.png
        (some files have one more underscore field before <view>; <view> is always second-last)
    ROOT/<drone>/exocentric/silhouette/<building>/...      optional; same (row, date, frame) names
    ROOT/data splits/scenes_{train,val,test}.txt            building names, one per line
    an annotation JSON:  {"drones": {<drone>: {"<building>_<row>_<date>": {"exocentric": {<frame>: {
        "pose": 16 numbers (row-major 4x4, drone body -> camera; a list or a JSON string),
        "3dpoints": [[u, v], ...] the projected 3D keypoints in pixels,
        "visibleAll": bool, optional "visibility": [bool, ...] per keypoint, "2dbbox", "3dbbox"}}}}}}
The drone's 3D keypoints (models/drones/<drone>.yaml) must be listed in the order of "3dpoints".
With camera_convention="opengl" the pose's camera frame is x right, y up, z backward and is
turned into the OpenCV optical frame used everywhere else (x right, y down, z forward).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from drone_pose.data.augment import AugmentConfig, GeometricSample
from drone_pose.data.dataset import AugmentedDataset
from drone_pose.data.generate import SPLITS
from drone_pose.data.shards import DatasetFormatError
from drone_pose.drones import load_drone
from drone_pose.errors import UserError
from drone_pose.geometry.camera import PinholeCamera

log = logging.getLogger(__name__)

SPLIT_DIR = "data splits"
ANNOTATION_NAMES = ("annotations.json", "metadata.json", "uava.json")
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class UAVAFrame:
    """One annotated exocentric frame: image and optional silhouette paths, ground truth."""

    key: str
    frame: str
    image: Path
    silhouette: Path | None
    R: np.ndarray
    t: np.ndarray
    keypoints: np.ndarray
    visibility: np.ndarray


def parse_image_name(name: str) -> tuple[str, str, str, str]:
    """(row, date, frame, view) of a UAVA image file name; ValueError for any other name."""
    parts = Path(name).stem.split("_")
    if len(parts) not in (6, 7):
        raise ValueError(f"{name!r} is not a UAVA image name (<row>_<date>_<frame>_<x>_<view>_<type>)")
    return parts[0], parts[1], parts[2], parts[-2]


class UAVADataset(AugmentedDataset):
    """The exocentric colour frames of one drone and one split of a UAVA folder.

    K and image_size (width, height) are the dataset's camera (default: the UAVA camera, 320x240,
    fx = fy ~ 252.7, cx = 160, cy = 120). Frames whose annotation is missing or malformed are
    skipped and listed in `rejected` with the reason. With require_all_inside (the papers'
    preprocessing) frames with a keypoint outside the image are dropped.
    """

    def __init__(
        self,
        root: str | Path,
        drone: str,
        split: str = "train",
        annotations: str | Path | None = None,
        K: np.ndarray | None = None,
        image_size: tuple[int, int] = (320, 240),
        camera_convention: str = "opencv",
        require_all_inside: bool = True,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(augment, seed)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if camera_convention not in ("opencv", "opengl"):
            raise ValueError(f"camera_convention must be 'opencv' or 'opengl', got {camera_convention!r}")
        self.root = Path(root)
        self.drone = load_drone(drone)
        self.K = PinholeCamera.uava().K(torch.float64).numpy() if K is None else np.asarray(K, float)
        self.width, self.height = image_size
        self.convention = camera_convention
        self.rejected: list[tuple[str, str]] = []
        colour_dir = self.root / drone / "exocentric" / "colour"
        if not colour_dir.is_dir():
            raise DatasetFormatError(f"{self.root}: no {drone}/exocentric/colour folder; not a UAVA root")
        table = _drone_annotations(_load_annotations(self.root, annotations), drone)
        self.frames: list[UAVAFrame] = []
        for building in read_split(self.root, split):
            folder = colour_dir / building
            if not folder.is_dir():
                self.rejected.append((str(folder), "building of the split file has no image folder"))
                continue
            silhouettes = _silhouettes(self.root / drone / "exocentric" / "silhouette" / building)
            for image in sorted(folder.glob("*.png")):
                frame = self._frame(building, image, table, silhouettes, require_all_inside)
                if frame is not None:
                    self.frames.append(frame)
        if self.rejected:
            log.warning(
                "UAVA %s/%s: %d frames rejected, first: %s",
                drone,
                split,
                len(self.rejected),
                self.rejected[0],
            )
        if not self.frames:
            first = f"; first rejection: {self.rejected[0][1]}" if self.rejected else ""
            raise DatasetFormatError(f"{self.root}: no usable {drone} frame in split {split!r}{first}")

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, i: int) -> tuple[GeometricSample, int]:
        frame = self.frames[i]
        decoded = cv2.imread(str(frame.image), cv2.IMREAD_COLOR)
        if decoded is None:
            raise DatasetFormatError(f"{frame.image}: image does not decode")
        height, width = decoded.shape[:2]
        if (width, height) != (self.width, self.height):
            raise DatasetFormatError(
                f"{frame.image}: {width}x{height} image, expected {self.width}x{self.height}"
            )
        mask = np.zeros((height, width), bool)
        if frame.silhouette is not None:
            silhouette = cv2.imread(str(frame.silhouette), cv2.IMREAD_GRAYSCALE)
            if silhouette is not None and silhouette.shape == (height, width):
                mask = silhouette > 127
        image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        return GeometricSample(image, mask, frame.keypoints, frame.visibility, self.K, frame.R, frame.t), i

    def reprojection_check(self) -> dict[str, float]:
        """Pixel distance between the annotated keypoints and the drone model's keypoints projected
        with the annotated pose and K (median, p95, max): a few pixels or less when the drone
        model, keypoint order, K and camera convention all match the data."""
        errors = []
        for frame in self.frames:
            p = self.drone.keypoints @ frame.R.T + frame.t
            uv = (p @ self.K.T)[:, :2] / p[:, 2:3]
            errors.append(np.linalg.norm(uv - frame.keypoints, axis=1))
        flat = np.concatenate(errors)
        return {
            "median_px": float(np.median(flat)),
            "p95_px": float(np.percentile(flat, 95)),
            "max_px": float(flat.max()),
        }

    def _frame(
        self,
        building: str,
        image: Path,
        table: dict[str, Any],
        silhouettes: dict[tuple[str, ...], Path],
        require_all_inside: bool,
    ) -> UAVAFrame | None:
        try:
            row, date, frame_id, view = parse_image_name(image.name)
        except ValueError as error:
            self.rejected.append((str(image), str(error)))
            return None
        if view != "exocentric":
            return None
        key = f"{building}_{row}_{date}"
        try:
            frames = table[key]["exocentric"]
            entry = frames[frame_id] if frame_id in frames else frames[str(int(frame_id))]
            R, t = self._pose(entry["pose"])
            keypoints = np.asarray(entry["3dpoints"], np.float64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as error:
            self.rejected.append((str(image), f"annotation {key}/{frame_id}: {type(error).__name__} {error}"))
            return None
        problem = None
        if len(keypoints) != self.drone.num_keypoints:
            problem = f"{len(keypoints)} keypoints for a {self.drone.num_keypoints}-keypoint drone model"
        elif not np.isfinite(keypoints).all():
            problem = "non-finite keypoints"
        elif t[2] <= 0:
            problem = f"drone behind the camera (z = {t[2]:.2f} m; wrong camera_convention?)"
        if problem is not None:
            self.rejected.append((str(image), f"annotation {key}/{frame_id}: {problem}"))
            return None
        inside = (
            (keypoints >= 0).all(1)
            & (keypoints[:, 0] <= self.width - 1)
            & (keypoints[:, 1] <= self.height - 1)
        )
        if require_all_inside and not inside.all():
            return None
        visibility = inside
        if "visibility" in entry:
            visibility = inside & np.asarray(entry["visibility"], bool).reshape(-1)
        return UAVAFrame(
            key,
            frame_id,
            image,
            silhouettes.get((row, date, frame_id)),
            R,
            t,
            keypoints.astype(np.float32),
            visibility,
        )

    def _pose(self, value: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(value, str):
            value = json.loads(value)
        matrix = np.asarray(value, np.float64).reshape(4, 4)
        R, t = matrix[:3, :3], matrix[:3, 3]
        if self.convention == "opengl":
            R, t = OPENGL_TO_OPENCV @ R, OPENGL_TO_OPENCV @ t
        if not np.isfinite(matrix).all() or abs(np.linalg.det(R) - 1) > 1e-3:
            raise ValueError("pose is not a finite rigid transform")
        return R, t


def read_split(root: Path, split: str) -> list[str]:
    """Building names of a split from ROOT/data splits/scenes_<split>.txt."""
    path = root / SPLIT_DIR / f"scenes_{split}.txt"
    if not path.is_file():
        raise DatasetFormatError(f"{root}: missing split file {SPLIT_DIR}/scenes_{split}.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _load_annotations(root: Path, annotations: str | Path | None) -> dict[str, Any]:
    if annotations is None:
        candidates = [root / name for name in ANNOTATION_NAMES if (root / name).is_file()]
        if not candidates:
            raise DatasetFormatError(
                f"{root}: no annotation JSON (looked for {', '.join(ANNOTATION_NAMES)}); "
                "pass annotations=PATH"
            )
        annotations = candidates[0]
    path = Path(annotations)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetFormatError(f"{path}: unreadable annotation JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("drones"), dict):
        raise DatasetFormatError(f"{path}: annotation JSON has no 'drones' table")
    return data


def _drone_annotations(data: dict[str, Any], drone: str) -> dict[str, Any]:
    table = data["drones"].get(drone)
    if not isinstance(table, dict):
        raise DatasetFormatError(f"annotation JSON has no drone {drone!r} (has {sorted(data['drones'])})")
    return table


def _silhouettes(folder: Path) -> dict[tuple[str, ...], Path]:
    found = {}
    if folder.is_dir():
        for path in folder.glob("*.png"):
            try:
                row, date, frame_id, _ = parse_image_name(path.name)
            except ValueError:
                continue
            found[(row, date, frame_id)] = path
    return found
