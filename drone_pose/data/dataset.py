"""PyTorch datasets of drone images with pose ground truth.

Every dataset here returns the same sample, a dict of tensors:
    image       [3,H,W] float32 RGB in [0,1]
    mask        [H,W] bool, visible-drone silhouette (all False where the source has none)
    full_mask   [H,W] float32 in [0,1], the drone's whole silhouette, occluders ignored (the mask
                head's target; fractional where augmentation resampled it); where the source has
                none (UAVA, shards rendered before it was stored) the visible mask stands in:
                a dataset's `has_full_mask` says which
    keypoints   [K,2] float32 pixels (pixel centres at integers)
    visibility  [K] bool, keypoint in the image and not occluded
    K           [3,3] float32 intrinsics of this (possibly augmented) image
    R [3,3], t [3] float32, camera optical <- drone body, metres
    index       int64 scalar, the sample's identity in its source
Augmentation draws from a stream seeded by (seed, epoch, index): call set_epoch each epoch to get
new augmentations that are still reproducible and independent of the DataLoader worker layout.
"""

from __future__ import annotations

import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from drone_pose.data.augment import AugmentConfig, GeometricSample, augment
from drone_pose.data.generate import SPLITS, GenerationSpec, render_sample
from drone_pose.data.shards import FULL_MASK_KEY, SHARD_KEYS, DatasetFormatError, read_index
from drone_pose.drones import load_drone
from drone_pose.errors import UserError

log = logging.getLogger(__name__)

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
_IN_MEMORY_KEYS = ("offsets", "keypoints", "visibility", "bbox", "R", "t", "index")


def to_sample(geometry: GeometricSample, index: int) -> dict[str, torch.Tensor]:
    """The dataset sample dict (module docstring) of one sample's geometry."""
    full_mask = geometry.mask if geometry.full_mask is None else geometry.full_mask
    return {
        "image": torch.from_numpy(np.ascontiguousarray(geometry.image.transpose(2, 0, 1))),
        "mask": torch.from_numpy(np.ascontiguousarray(geometry.mask)),
        "full_mask": torch.from_numpy(np.ascontiguousarray(full_mask, dtype=np.float32)),
        "keypoints": torch.as_tensor(geometry.keypoints, dtype=torch.float32),
        "visibility": torch.as_tensor(geometry.visibility, dtype=torch.bool),
        "K": torch.as_tensor(geometry.K, dtype=torch.float32),
        "R": torch.as_tensor(geometry.R, dtype=torch.float32),
        "t": torch.as_tensor(geometry.t, dtype=torch.float32),
        "index": torch.tensor(index, dtype=torch.int64),
    }


class AugmentedDataset(Dataset):
    """Base class: subclasses implement __len__ and load(i) -> (GeometricSample, index).

    has_full_mask: whether samples carry the drone's whole silhouette (else full_mask is the visible
    mask)."""

    has_full_mask = False

    def __init__(self, augment_config: AugmentConfig | None, seed: int) -> None:
        self.augment_config = augment_config
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of an epoch."""
        self.epoch = int(epoch)

    def load(self, i: int) -> tuple[GeometricSample, int]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a dataset of {len(self)}")
        geometry, index = self.load(i)
        if self.augment_config is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            geometry = augment(geometry, rng, self.augment_config)
        return to_sample(geometry, index)


@dataclass(frozen=True)
class _ShardInfo:
    path: Path
    count: int
    arrays: dict[str, np.ndarray]  # the small per-sample arrays, in memory
    encoded: tuple[int, np.dtype, tuple[int, ...]]  # (file offset, dtype, shape) of the images
    mask_bits: tuple[int, np.dtype, tuple[int, ...]]
    full_mask_bits: tuple[int, np.dtype, tuple[int, ...]] | None  # None: rendered before it was stored


class ShardDataset(AugmentedDataset):
    """One split of a dataset written by `drone-pose synth` (format in drone_pose.data.shards).

    Every shard is checked when the dataset is opened (zip CRCs, array names, shapes and counts);
    a corrupt or missing shard is logged, listed in `rejected` and skipped, and the others are
    read. Images and masks stay on disk and are read through memory maps, so DataLoader workers
    share the page cache instead of each holding a copy.
    """

    def __init__(
        self, root: str | Path, split: str = "train", augment: AugmentConfig | None = None, seed: int = 0
    ) -> None:
        super().__init__(augment, seed)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.index_data = read_index(self.root)
        camera = self.index_data["camera"]
        self.width, self.height = int(camera["width"]), int(camera["height"])
        self.K = np.asarray(camera["K"], dtype=np.float64)
        self.drone = self.index_data["drone"]
        self.rejected: list[tuple[str, str]] = []
        self.shards: list[_ShardInfo] = []
        for entry in self.index_data["splits"].get(split, []):
            path = self.root / entry["file"]
            try:
                self.shards.append(_inspect_shard(path, self.height * self.width))
            except DatasetFormatError as error:
                log.warning("skipping shard: %s", error)
                self.rejected.append((str(path), str(error)))
        if not self.shards:
            raise DatasetFormatError(f"{self.root}: no readable shard in split {split!r}")
        self._starts = np.cumsum([0] + [s.count for s in self.shards])
        self._maps: dict[int, tuple[np.memmap, ...]] = {}
        self.has_full_mask = all(s.full_mask_bits is not None for s in self.shards)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in each worker process
        return state

    def labels(self) -> dict[str, np.ndarray]:
        """Every sample's keypoints [N,K,2] px, R [N,3,3] and t [N,3] metres (camera <- drone), in
        sample order, read from the in-memory shard arrays without decoding any image."""
        return {key: np.concatenate([s.arrays[key] for s in self.shards]) for key in ("keypoints", "R", "t")}

    def load(self, i: int) -> tuple[GeometricSample, int]:
        number = int(np.searchsorted(self._starts, i, side="right") - 1)
        shard, j = self.shards[number], i - int(self._starts[number])
        encoded, mask_bits, *full_mask_bits = self._memory_maps(number)
        offsets = shard.arrays["offsets"]
        decoded = cv2.imdecode(np.asarray(encoded[offsets[j] : offsets[j + 1]]), cv2.IMREAD_COLOR)
        index = int(shard.arrays["index"][j])
        if decoded is None or decoded.shape[:2] != (self.height, self.width):
            raise DatasetFormatError(
                f"{shard.path}: image of sample {index} does not decode to {self.width}x{self.height}"
            )
        image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        pixels = self.height * self.width
        mask = np.unpackbits(mask_bits[j], count=pixels).reshape(self.height, self.width)
        full_mask = None
        if self.has_full_mask:
            full_mask = np.unpackbits(full_mask_bits[0][j], count=pixels).reshape(self.height, self.width)
        geometry = GeometricSample(
            image=image,
            mask=mask.astype(bool),
            keypoints=shard.arrays["keypoints"][j],
            visibility=shard.arrays["visibility"][j],
            K=self.K,
            R=shard.arrays["R"][j],
            t=shard.arrays["t"][j],
            full_mask=None if full_mask is None else full_mask.astype(np.float32),
        )
        return geometry, index

    def _memory_maps(self, number: int) -> tuple[np.memmap, ...]:
        """Memory maps of a shard's images, masks and (when stored) full masks."""
        if number not in self._maps:
            shard = self.shards[number]
            located = (shard.encoded, shard.mask_bits, shard.full_mask_bits)
            self._maps[number] = tuple(
                np.memmap(shard.path, dtype=dtype, mode="r", offset=offset, shape=shape)
                for offset, dtype, shape in (entry for entry in located if entry is not None)
            )
        return self._maps[number]


class RenderedDataset(AugmentedDataset):
    """Samples rendered on the fly, identical to those `drone-pose synth` writes for the same spec.

    Sample i of the dataset is sample first + i of the generator (so splits can be emulated by
    disjoint index ranges).
    """

    has_full_mask = True

    def __init__(
        self,
        spec: GenerationSpec,
        count: int,
        first: int = 0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(augment, seed)
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.spec, self.count, self.first = spec, count, first
        self._drone = load_drone(spec.drone)

    def __len__(self) -> int:
        return self.count

    def load(self, i: int) -> tuple[GeometricSample, int]:
        index = self.first + i
        scene = render_sample(self.spec, index, self._drone)["scene"]
        geometry = GeometricSample(
            image=scene.image.astype(np.float32) / 255.0,
            mask=scene.mask,
            keypoints=scene.keypoints,
            visibility=scene.visibility,
            K=np.array(self.spec.K),
            R=scene.R,
            t=scene.t,
            full_mask=scene.full_mask.astype(np.float32),
        )
        return geometry, index


def _inspect_shard(path: Path, pixels: int) -> _ShardInfo:
    """Validate a shard and locate its large arrays; DatasetFormatError naming what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise DatasetFormatError(f"{path}: member {bad} fails its CRC check")
            names = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = [key for key in SHARD_KEYS if key not in names]
            if missing:
                raise DatasetFormatError(f"{path}: shard lacks {', '.join(missing)}")
            arrays = {}
            for key in _IN_MEMORY_KEYS:
                with archive.open(names[key]) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
        with path.open("rb") as handle:
            encoded = _stored_array_location(handle, names["encoded"], path)
            mask_bits = _stored_array_location(handle, names["mask_bits"], path)
            full_mask_bits = None
            if FULL_MASK_KEY in names:
                full_mask_bits = _stored_array_location(handle, names[FULL_MASK_KEY], path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as error:
        if isinstance(error, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{path}: unreadable shard ({type(error).__name__}: {error})") from error
    count = len(arrays["index"])
    consistent = (
        len(arrays["offsets"]) == count + 1
        and all(len(arrays[key]) == count for key in ("keypoints", "visibility", "bbox", "R", "t"))
        and mask_bits[2] == (count, (pixels + 7) // 8)
        and (full_mask_bits is None or full_mask_bits[2] == mask_bits[2])
        and len(encoded[2]) == 1
        and int(arrays["offsets"][-1]) == encoded[2][0]
        and bool(np.all(np.diff(arrays["offsets"]) > 0))
    )
    if not consistent:
        raise DatasetFormatError(f"{path}: shard arrays disagree on sample count, image size or offsets")
    return _ShardInfo(path, count, arrays, encoded, mask_bits, full_mask_bits)


def _stored_array_location(
    handle: Any, info: zipfile.ZipInfo, path: Path
) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(file offset, dtype, shape) of the data of an uncompressed .npy member of a zip file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise DatasetFormatError(f"{path}: member {info.filename} is compressed; shards must be stored")
    handle.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if fields[0] != _LOCAL_SIGNATURE:
        raise DatasetFormatError(f"{path}: bad zip local header for {info.filename}")
    handle.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise DatasetFormatError(f"{path}: member {info.filename} has unsupported .npy version {version}")
    shape, fortran_order, dtype = readers[version](handle)
    if fortran_order or dtype.hasobject:
        raise DatasetFormatError(f"{path}: member {info.filename} is not a plain C-order array")
    return handle.tell(), dtype, tuple(shape)
