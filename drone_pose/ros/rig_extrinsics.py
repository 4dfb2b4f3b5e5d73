"""Where the fusion node gets each camera's extrinsics cam_from_rig [4,4]: a rig file or TF.

Plain Python (no rclpy): the TF source reads a TransformBuffer, which the node's TransformListener
fills. A view without extrinsics is not an error of the node: `cam_from_rig` returns the reason
(counted per camera), and the group is fused from the other views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drone_pose.fusion.rig_file import Rig
from drone_pose.ros.frame_pairing import Frame, stamp_ns
from drone_pose.ros.transform_buffer import TransformBuffer, TransformLookupError

# Reasons a view has no extrinsics.
EXTRINSICS_REJECTIONS = ("missing_extrinsics", "frame_id_mismatch")


@dataclass(frozen=True)
class ExtrinsicsLookup:
    """cam_from_rig [4,4] float64 (p_cam = T p_rig, metres) of a view, or the reason it has none
    (one of EXTRINSICS_REJECTIONS) and a one-line detail for the log."""

    cam_from_rig: np.ndarray | None
    reason: str = ""
    detail: str = ""


class RigFileExtrinsics:
    """Fixed extrinsics from a rig file; a camera's images must carry the frame_id the file gives it."""

    def __init__(self, rig: Rig, cameras: tuple[str, ...]) -> None:
        missing = [camera for camera in cameras if camera not in rig.camera_names]
        if missing:
            raise ValueError(
                f"the rig file has no camera {missing[0]!r} (it has {list(rig.camera_names)}): "
                "add it or change cameras"
            )
        self.rig_frame = rig.rig_frame
        views = zip(rig.camera_names, rig.frame_ids, rig.cam_from_rig, strict=True)
        self._by_camera = {name: (frame_id, T) for name, frame_id, T in views}

    @property
    def source(self) -> str:
        return "rig_file"

    def cam_from_rig(self, camera: str, frame: Frame) -> ExtrinsicsLookup:
        frame_id, T = self._by_camera[camera]
        if frame.header.frame_id.lstrip("/") != frame_id:
            return ExtrinsicsLookup(
                None,
                "frame_id_mismatch",
                f"{camera}: images in frame {frame.header.frame_id!r}, the rig file says {frame_id!r}",
            )
        return ExtrinsicsLookup(T)


class TransformExtrinsics:
    """Extrinsics from TF: rig_frame -> each image's frame_id at the image's stamp (static
    transforms at any stamp), looked up in a TransformBuffer."""

    def __init__(self, buffer: TransformBuffer, rig_frame: str) -> None:
        self.buffer = buffer
        self.rig_frame = rig_frame

    @property
    def source(self) -> str:
        return "tf"

    def cam_from_rig(self, camera: str, frame: Frame) -> ExtrinsicsLookup:
        try:
            T = self.buffer.lookup(frame.header.frame_id, self.rig_frame, stamp_ns(frame.header))
        except TransformLookupError as error:
            return ExtrinsicsLookup(None, "missing_extrinsics", f"{camera}: {error}")
        return ExtrinsicsLookup(T)
