"""sensor_msgs/Image <-> numpy: round trips, padded rows, byte order and malformed messages."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from drone_pose.ros.image_conversions import ImageConversionError, image_to_numpy, numpy_to_image

STAMP = Time(sec=12, nanosec=345)


@pytest.mark.parametrize(
    ("encoding", "shape", "dtype"),
    [
        ("rgb8", (4, 5, 3), np.uint8),
        ("mono8", (3, 2), np.uint8),
        ("mono16", (3, 4), np.uint16),
        ("32FC1", (2, 2), np.float32),
        ("bgra8", (2, 3, 4), np.uint8),
    ],
)
def test_round_trip(encoding, shape, dtype):
    pixels = (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)
    msg = numpy_to_image(pixels, encoding, STAMP, "cam")
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.encoding) == ("cam", 12, encoding)
    back = image_to_numpy(msg)
    np.testing.assert_array_equal(back.reshape(shape), pixels)


def test_padded_rows_are_cropped():
    msg = Image(height=2, width=3, encoding="mono8", step=8)
    msg.data = bytes(range(16))
    np.testing.assert_array_equal(image_to_numpy(msg)[..., 0], [[0, 1, 2], [8, 9, 10]])


def test_big_endian_16_bit():
    msg = Image(height=1, width=2, encoding="mono16", step=4, is_bigendian=1)
    msg.data = bytes([0x01, 0x02, 0x03, 0x04])
    assert image_to_numpy(msg)[0, :, 0].tolist() == [0x0102, 0x0304]


@pytest.mark.parametrize(
    ("fields", "data", "message"),
    [
        ({"height": 2, "width": 2, "encoding": "yuv422", "step": 4}, 8, "unsupported encoding"),
        ({"height": 0, "width": 0, "encoding": "rgb8", "step": 0}, 0, "zero size"),
        ({"height": 8000, "width": 8001, "encoding": "rgb8", "step": 24003}, 0, "exceeds"),
        ({"height": 2, "width": 4, "encoding": "rgb8", "step": 6}, 24, "shorter than a row"),
        ({"height": 4, "width": 4, "encoding": "rgb8", "step": 12}, 40, "data has 40 bytes"),
    ],
)
def test_malformed_images_are_rejected(fields, data, message):
    msg = Image(**fields)
    msg.data = bytes(data)
    with pytest.raises(ImageConversionError, match=message):
        image_to_numpy(msg)


def test_wrong_array_for_encoding():
    with pytest.raises(ImageConversionError, match="rgb8 needs"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8", STAMP, "cam")


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height RGB pixels; its data holds one row only
    (as a decompression bomb's header would, without the bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(bytes(1 + 3 * min(width, 4096)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def test_compressed_images_are_sized_from_their_header_before_decoding():
    import time

    import cv2

    from drone_pose.ros.image_conversions import (
        ImageConversionError,
        ImageTooLargeError,
        compressed_image_size,
        decode_compressed,
    )

    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 100_000
    assert compressed_image_size(bomb) == (20000, 20000)
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        decode_compressed(bomb, max_pixels=50_000_000)
    assert time.perf_counter() - started < 0.5  # refused from the header, nothing decoded
    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), (10, 20, 30), np.uint8))
    assert ok
    assert compressed_image_size(jpeg.tobytes()) == (64, 48)
    rgb = decode_compressed(jpeg.tobytes(), max_pixels=64 * 48)
    assert rgb.shape == (48, 64, 3)
    assert abs(int(rgb[0, 0, 0]) - 30) <= 3
    with pytest.raises(ImageTooLargeError):
        decode_compressed(jpeg.tobytes(), max_pixels=64 * 48 - 1)
    for garbage in (b"", b"not a jpeg", jpeg.tobytes()[:20]):
        with pytest.raises(ImageConversionError):
            decode_compressed(garbage, max_pixels=10**8)
