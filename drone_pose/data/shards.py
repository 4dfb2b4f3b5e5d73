"""The on-disk format of rendered datasets: a JSON index plus NumPy .npz shards.

DIR/dataset.json  {"format": "drone_pose.synthetic", "version": 1, "drone", "camera": {width, height,
                  K}, "seed", "count", "splits": {split: [{"file", "count"}]}, "scene", "poses",
                  "statistics"}
DIR/synth_settings.json  the settings it is rendered with, written first: an interrupted synth
                  resumes from them (drone_pose.data.synth_progress)
DIR/<split>-<nnnnn>.npz, one per shard, uncompressed zip of:
    encoded [bytes] uint8, offsets [n+1] int64     the RGB images as concatenated JPEG (q 95) or PNG files
    mask_bits [n, ceil(H*W/8)] uint8               visible-drone masks, np.packbits of [H,W] bool
    full_mask_bits [n, ceil(H*W/8)] uint8          (datasets rendered since the silhouette head) the
                                                   drone's whole silhouette, occluders ignored, packed
    keypoints [n,K,2] float32 pixels, visibility [n,K] bool, bbox [n,4] float32 (x0, y0, x1, y1)
    R [n,3,3] float64, t [n,3] float64            camera optical <- drone body, metres
    index [n] int64                                global sample index (its seed is (seed, index))
  multi-camera datasets (dataset.json has "rig"), image g*V + v being view v of group g, also:
    cam_from_rig [n,4,4] float64                   the view's extrinsics, p_cam = T p_rig (metres)
    group [n] int64, view [n] int64                its group and camera number
Shards hold no pickled objects (np.load with allow_pickle=False).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drone_pose.atomic_files import atomic_open
from drone_pose.errors import UserError

FORMAT = "drone_pose.synthetic"
VERSION = 1
INDEX_FILE = "dataset.json"
SHARD_KEYS = ("encoded", "offsets", "mask_bits", "keypoints", "visibility", "bbox", "R", "t", "index")
RIG_KEYS = ("cam_from_rig", "group", "view")
FULL_MASK_KEY = "full_mask_bits"  # optional: shards rendered before it lack it


class DatasetFormatError(UserError):
    """A dataset folder, index or shard that cannot be read."""


@dataclass(frozen=True)
class Shard:
    """The arrays of one shard (see the module docstring)."""

    encoded: np.ndarray
    offsets: np.ndarray
    mask_bits: np.ndarray
    keypoints: np.ndarray
    visibility: np.ndarray
    bbox: np.ndarray
    R: np.ndarray
    t: np.ndarray
    index: np.ndarray
    cam_from_rig: np.ndarray | None = None
    group: np.ndarray | None = None
    view: np.ndarray | None = None
    full_mask_bits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> np.ndarray:
        """Image i as [H,W,3] uint8 RGB; DatasetFormatError when its PNG does not decode."""
        data = self.encoded[self.offsets[i] : self.offsets[i + 1]]
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if decoded is None:
            raise DatasetFormatError(f"image {int(self.index[i])} does not decode")
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

    def mask(self, i: int, height: int, width: int) -> np.ndarray:
        """Visible-drone mask i as [H,W] bool."""
        return np.unpackbits(self.mask_bits[i], count=height * width).reshape(height, width).astype(bool)

    def full_mask(self, i: int, height: int, width: int) -> np.ndarray | None:
        """The drone's whole silhouette i (occluders ignored) as [H,W] bool; None for a shard rendered
        before full masks were stored."""
        if self.full_mask_bits is None:
            return None
        bits = self.full_mask_bits[i]
        return np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)


def encode_shard(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    keypoints: np.ndarray,
    visibility: np.ndarray,
    bbox: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    index: np.ndarray,
    lossless: bool = False,
    full_masks: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of a shard from per-sample images [H,W,3] uint8 RGB, visible-drone masks and
    (optionally) whole-silhouette full_masks [H,W] bool.

    Images are stored as JPEG quality 95 (its error is below the rendered sensor noise) or, with
    lossless, as PNG (slower and larger; figures in docs/experiments.md).
    """
    if lossless:
        suffix, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
    else:
        suffix, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]
    blobs = []
    for image in images:
        ok, encoded = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"{suffix} encoding failed")
        blobs.append(encoded.ravel())
    offsets = np.concatenate(([0], np.cumsum([len(b) for b in blobs]))).astype(np.int64)
    arrays = {
        "encoded": np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
        "offsets": offsets,
        "mask_bits": np.stack([np.packbits(m.ravel()) for m in masks]),
        "keypoints": keypoints.astype(np.float32),
        "visibility": visibility.astype(bool),
        "bbox": bbox.astype(np.float32),
        "R": R.astype(np.float64),
        "t": t.astype(np.float64),
        "index": index.astype(np.int64),
    }
    if full_masks is not None:
        arrays[FULL_MASK_KEY] = np.stack([np.packbits(m.ravel()) for m in full_masks])
    return arrays


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a shard whole or not at all (drone_pose.atomic_files)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def read_shard(path: Path) -> Shard:
    """Load a shard; DatasetFormatError naming the file for a missing, truncated or malformed one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in SHARD_KEYS if key not in data.files]
            if missing:
                raise DatasetFormatError(f"{path}: shard lacks {', '.join(missing)}")
            rig = [key for key in RIG_KEYS if key in data.files]
            if rig and len(rig) != len(RIG_KEYS):
                raise DatasetFormatError(
                    f"{path}: shard has {', '.join(rig)} but not all of {', '.join(RIG_KEYS)}"
                )
            optional = [FULL_MASK_KEY] if FULL_MASK_KEY in data.files else []
            shard = Shard(**{key: data[key] for key in (*SHARD_KEYS, *rig, *optional)})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{path}: unreadable shard ({type(error).__name__}: {error})") from error
    count = len(shard.index)
    if len(shard.offsets) != count + 1 or any(
        len(getattr(shard, key)) != count
        for key in ("mask_bits", "keypoints", "visibility", "bbox", "R", "t", *RIG_KEYS, FULL_MASK_KEY)
        if getattr(shard, key) is not None
    ):
        raise DatasetFormatError(f"{path}: shard arrays disagree on the sample count")
    return shard


def read_index(root: str | Path) -> dict[str, Any]:
    """The validated dataset.json of a dataset folder."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        from drone_pose.data.synth_progress import explain_unfinished  # it reads shards: imported here

        reason = explain_unfinished(Path(root)) if Path(root).is_dir() else None
        raise DatasetFormatError(reason or f"{root}: no {INDEX_FILE}; not a drone_pose dataset folder")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DatasetFormatError(f"{path}: not a {FORMAT} version {VERSION} index")
    for key in ("drone", "camera", "splits"):
        if key not in index:
            raise DatasetFormatError(f"{path}: missing key {key!r}")
    return index
