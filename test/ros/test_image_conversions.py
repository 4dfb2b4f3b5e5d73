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
