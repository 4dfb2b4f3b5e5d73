"""One camera's input topics: image (raw or compressed) and camera_info into a FramePairing.

Shared by the tracker (one camera) and the fusion node (one per camera). The callbacks run on the
executor thread: they decode and validate only, count every image, and hand rejected ones to
`reject(reason)`; nothing here raises into rclpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from rclpy.node import Node
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from drone_pose.ros.frame_pairing import PAIRING_REJECTIONS, FramePairing
from drone_pose.ros.image_conversions import (
    ImageConversionError,
    ImageTooLargeError,
    decode_compressed,
    rgb_of,
)
from drone_pose.ros.qos import sensor_data_qos

# Reasons an image is rejected before estimation (the others come from the estimator's verdict).
INPUT_REJECTIONS = ("bad_image", "image_too_large", *PAIRING_REJECTIONS)
TRANSPORTS = ("raw", "compressed")


class CameraInput:
    """Image and CameraInfo callbacks of one camera: decoded, size-checked and paired.

    pairing: where valid images go (it pairs them with their CameraInfo); counters: the node's (or
    the camera's) counter, images_received is counted here; reject(reason): called once per
    rejected image; max_pixels: larger images are rejected before any copy or decode.
    """

    def __init__(
        self,
        pairing: FramePairing,
        counters: Counter[str],
        reject: Callable[[str], None],
        max_pixels: int,
    ) -> None:
        self.pairing = pairing
        self.counters = counters
        self.reject = reject
        self.max_pixels = max_pixels

    def on_camera_info(self, msg: CameraInfo) -> None:
        self.pairing.add_camera_info(msg)

    def on_compressed(self, msg: CompressedImage) -> None:
        self.counters["images_received"] += 1
        try:
            rgb = decode_compressed(bytes(msg.data), self.max_pixels)
        except ImageTooLargeError:
            self.reject("image_too_large")
            return
        except ImageConversionError:
            self.reject("bad_image")
            return
        self.pairing.add_image(rgb, msg.header)

    def on_image(self, msg: Image) -> None:
        self.counters["images_received"] += 1
        if int(msg.width) * int(msg.height) > self.max_pixels:
            self.reject("image_too_large")
            return
        try:
            rgb = rgb_of(msg)
        except ImageConversionError:
            self.reject("bad_image")
            return
        self.pairing.add_image(rgb, msg.header)

    def subscribe(
        self, node: Node, image_topic: str, camera_info_topic: str, transport: str, depth: int
    ) -> list[Any]:
        """Subscribe `image_topic` (sensor_msgs/Image; `<image_topic>/compressed` with the
        compressed transport, as image_transport names it) and `camera_info_topic`, best effort
        with `depth` (QoS overridable by parameters); returns the subscriptions."""
        qos = sensor_data_qos(depth)
        overridable = QoSOverridingOptions.with_default_policies()
        if transport == "compressed":
            image = node.create_subscription(
                CompressedImage,
                f"{image_topic}/compressed",
                self.on_compressed,
                qos,
                qos_overriding_options=overridable,
            )
        else:
            image = node.create_subscription(
                Image, image_topic, self.on_image, qos, qos_overriding_options=overridable
            )
        info = node.create_subscription(
            CameraInfo, camera_info_topic, self.on_camera_info, qos, qos_overriding_options=overridable
        )
        return [image, info]
