"""sensor_msgs/Image <-> numpy without cv_bridge: zero-copy views where the layout allows."""

from __future__ import annotations

import io
import warnings

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
MAX_IMAGE_PIXELS = 64_000_000


class ImageConversionError(ValueError):
    """A sensor_msgs/Image that cannot be read as an array (bad encoding, size or data length)."""


class ImageTooLargeError(ValueError):
    """An image with more pixels than the caller's limit."""


def image_to_numpy(msg: Image) -> np.ndarray:
    """View of the message's pixels as [H, W, C] (C = 1 for mono encodings), in the message's channel order.

    Raises ImageConversionError for an unsupported encoding, zero or huge size, a step shorter than
    a row, or data shorter than step * height. The result aliases msg.data where possible.
    """
    if msg.encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported encoding {msg.encoding!r}; supported: {', '.join(ENCODINGS)}"
        )
    dtype, channels = ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size ({width}x{height})")
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageConversionError(f"image of {width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is shorter than a row of {width} {msg.encoding} pixels ({row_bytes} bytes)"
        )
    if step % dtype.itemsize:
        raise ImageConversionError(f"step {step} is not a multiple of the {dtype.itemsize}-byte sample size")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    if buffer.size < step * height:
        raise ImageConversionError(f"data has {buffer.size} bytes, expected step*height = {step * height}")
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.view(dtype) if dtype.itemsize == 1 else np.ascontiguousarray(rows).view(dtype)
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != (np.little_endian is False):
        pixels = pixels.byteswap()
    return pixels.reshape(height, width, channels)


def numpy_to_image(pixels: np.ndarray, encoding: str, stamp: Time, frame_id: str) -> Image:
    """sensor_msgs/Image holding pixels [H, W, C] (or [H, W] for one channel) with the given encoding."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    array = pixels if pixels.ndim == 3 else pixels[..., None]
    if array.ndim != 3 or array.shape[2] != channels or array.dtype != dtype:
        raise ImageConversionError(
            f"{encoding} needs an array [H, W, {channels}] of {dtype}, "
            f"got {list(pixels.shape)} of {pixels.dtype}"
        )
    array = np.ascontiguousarray(array)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0 if np.little_endian else 1
    msg.step = int(array.shape[1] * channels * dtype.itemsize)
    msg.data = array.reshape(-1).view(np.uint8)
    return msg


def rgb_of(msg: Image) -> np.ndarray:
    """[H,W,3] uint8 RGB of an rgb8, bgr8, rgba8, bgra8 or mono8 image; ImageConversionError otherwise."""
    pixels = image_to_numpy(msg)
    if pixels.dtype != np.uint8:
        raise ImageConversionError(f"encoding {msg.encoding} is not 8-bit; the tracker needs rgb8/bgr8/mono8")
    if msg.encoding in ("rgb8", "8UC3"):
        return pixels
    if msg.encoding == "bgr8":
        return pixels[..., ::-1]
    if msg.encoding in ("rgba8", "bgra8"):
        rgb = pixels[..., :3]
        return rgb if msg.encoding == "rgba8" else rgb[..., ::-1]
    return np.repeat(pixels, 3, axis=2)  # mono8 / 8UC1


def compressed_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) pixels of an encoded image read from its header alone, None when no header
    is recognised. Nothing is decoded: a small file that declares a huge image is sized in
    microseconds, so the caller can refuse it before the decoder allocates. PNG and JPEG (the
    formats of image_transport's `compressed`) are read by Pillow's plugins directly, which applies
    no size limit of its own; other formats through Pillow's open (whose bomb limit then applies)."""
    from PIL import Image as PillowImage
    from PIL import JpegImagePlugin, PngImagePlugin

    for plugin in (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile):
        try:
            with plugin(io.BytesIO(data)) as image:
                return int(image.width), int(image.height)
        except Exception:  # not this format (or a broken header)
            continue
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PillowImage.DecompressionBombWarning)
        try:
            with PillowImage.open(io.BytesIO(data)) as image:
                return int(image.width), int(image.height)
        except Exception:  # any header Pillow cannot read (or refuses) is "not an image"
            return None


def decode_compressed(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB [H,W,3] uint8 of an encoded image (sensor_msgs/CompressedImage data). The size is read
    from the header first: ImageTooLargeError above max_pixels (nothing decoded), ImageConversionError
    for data no decoder reads."""
    import cv2

    size = compressed_image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(f"compressed image declares {size[0]}x{size[1]} pixels, above {max_pixels}")
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if decoded is None:
        raise ImageConversionError("compressed image data is not a readable PNG or JPEG")
    if decoded.shape[0] * decoded.shape[1] > max_pixels:  # a format whose header Pillow does not read
        height, width = decoded.shape[:2]
        raise ImageTooLargeError(f"compressed image is {width}x{height}, above {max_pixels}")
    return np.ascontiguousarray(decoded[..., ::-1])
