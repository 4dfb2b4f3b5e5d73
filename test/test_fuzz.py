"""Property-based fuzzing (hypothesis) of everything that reads untrusted input: sensor_msgs images and
CameraInfo on their way to a validated frame, checkpoint files and bag files with random mutations and
truncations. Every input either gives a well-formed result or the module's own error / one counted
rejection; never another exception, a NaN or a hang.

Examples are bounded so that the file runs in well under a minute on a 2-core machine; deadlines are
generous because a loaded CI machine can be slow for any single example.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, Image

from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag
from drone_pose.bags.frames import BagError, read_frames
from drone_pose.inference.checkpoint import CheckpointError, load_checkpoint, network_from_checkpoint
from drone_pose.ros.frame_pairing import MIN_IMAGE_SIDE_PX, PAIRING_REJECTIONS, FrameMailbox, FramePairing
from drone_pose.ros.image_conversions import ENCODINGS, ImageConversionError, image_to_numpy, rgb_of

from .tiny_models import tiny_checkpoint

FUZZ = settings(
    max_examples=25,
    deadline=2000,  # ms per example: a loaded 2-core machine is slow now and then
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples every run: a failure in CI reproduces locally
)
UINT32 = 2**32 - 1
EIGHT_BIT = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3")


@st.composite
def image_messages(draw: st.DrawFn) -> Image:
    """sensor_msgs/Image with any encoding, size, step, byte order and a data buffer that may be
    shorter or longer than step * height (mostly near the sizes that matter)."""
    encoding = draw(st.sampled_from([*ENCODINGS, "", "yuv422", "RGB8", "bayer_rggb8", "64FC1"]))
    dtype, channels = ENCODINGS.get(encoding, (np.dtype(np.uint8), 3))
    small = st.integers(0, 24)
    height = draw(st.one_of(small, st.sampled_from([1, UINT32, 70_000])))
    width = draw(st.one_of(small, st.sampled_from([1, UINT32, 70_000])))
    row = width * channels * dtype.itemsize
    step = draw(st.one_of(st.just(row), st.integers(max(row - 3, 0), row + 9), st.integers(0, UINT32)))
    expected = min(step * height, 4096)
    size = draw(
        st.one_of(st.just(expected), st.integers(max(expected - 9, 0), expected + 9), st.integers(0, 64))
    )
    message = Image(height=height, width=width, encoding=encoding, step=step)
    message.is_bigendian = draw(st.integers(0, 1))
    message.data = draw(st.binary(min_size=size, max_size=size))
    return message


def _well_formed(message: Image) -> bool:
    """The independent reading of the message layout rules: known encoding, non-empty, a step that
    holds a row and is a whole number of samples, enough data."""
    if message.encoding not in ENCODINGS:
        return False
    dtype, channels = ENCODINGS[message.encoding]
    row = message.width * channels * dtype.itemsize
    return (
        message.height > 0
        and message.width > 0
        and message.height * message.width <= 64_000_000
        and message.step >= row
        and message.step % dtype.itemsize == 0
        and len(message.data) >= message.step * message.height
    )


@FUZZ
@given(image_messages())
def test_any_image_message_converts_exactly_or_raises_a_conversion_error(message):
    try:
        pixels = image_to_numpy(message)
    except ImageConversionError as error:
        assert str(error)  # noqa: PT017
        assert not _well_formed(message)
        return
    assert _well_formed(message)
    dtype, channels = ENCODINGS[message.encoding]
    assert pixels.shape == (message.height, message.width, channels)
    assert pixels.dtype == dtype
    # row r, column c, channel k sits at byte r * step + (c * channels + k) * itemsize
    raw = bytes(message.data)
    r, c, k = message.height - 1, message.width - 1, channels - 1
    offset = r * message.step + (c * channels + k) * dtype.itemsize
    order = ">" if message.is_bigendian else "<"
    expected = np.frombuffer(raw[offset : offset + dtype.itemsize], dtype=dtype.newbyteorder(order))[0]
    np.testing.assert_array_equal(pixels[r, c, k], expected)
    try:
        rgb = rgb_of(message)
    except ImageConversionError:
        assert message.encoding not in EIGHT_BIT
        return
    assert message.encoding in EIGHT_BIT
    assert rgb.shape == (message.height, message.width, 3)
    assert rgb.dtype == np.uint8


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 100.0, 1e-300, 1e300, float("nan"), float("inf")]),
)


@st.composite
def camera_infos(draw: st.DrawFn, width: int, height: int) -> CameraInfo:
    """CameraInfo that is mostly a plausible pinhole camera for width x height, with any entry
    replaced by anything (NaN, inf, zero, negative, huge) and a size that may not match."""
    K = [200.0, 0.0, width / 2, 0.0, 200.0, height / 2, 0.0, 0.0, 1.0]
    for index in draw(st.lists(st.integers(0, 8), max_size=3)):
        K[index] = draw(finite_or_not)
    info = CameraInfo(k=K)
    info.width = draw(st.one_of(st.just(width), st.integers(0, UINT32)))
    info.height = draw(st.one_of(st.just(height), st.integers(0, UINT32)))
    info.distortion_model = draw(
        st.sampled_from(["", "plumb_bob", "rational_polynomial", "equidistant", "bogus"])
    )
    info.d = draw(st.lists(finite_or_not, max_size=9))
    return info


@FUZZ
@given(st.data())
def test_image_and_camera_info_give_a_valid_frame_or_one_counted_rejection(data):
    """The node's path: rgb_of, then FramePairing. Each image ends as exactly one of: a frame whose K is
    a finite pinhole matrix and whose size matches its CameraInfo, a counted rejection, or a
    conversion error (which the node counts as a decoding rejection)."""
    rejections: list[str] = []
    counters: Counter[str] = Counter()
    mailbox = FrameMailbox()
    pairing = FramePairing(0.0, counters, rejections.append, mailbox, clock=lambda: 0.0)
    for second in range(1, data.draw(st.integers(1, 3)) + 1):
        message = data.draw(image_messages())
        try:
            rgb = rgb_of(message)
        except ImageConversionError:
            continue
        info = data.draw(camera_infos(message.width, message.height))
        header = SimpleNamespace(stamp=SimpleNamespace(sec=second, nanosec=0))
        info.header.stamp.sec = second
        before = len(rejections)
        pairing.add_camera_info(info)
        pairing.add_image(rgb, header)
        pairing.flush_pending()
        frame = mailbox.take(0.0)
        assert (frame is None) == (len(rejections) == before + 1), rejections
        if frame is None:
            assert rejections[-1] in PAIRING_REJECTIONS
            continue
        assert np.isfinite(frame.K).all()
        assert frame.K[0, 0] > 0
        assert frame.K[1, 1] > 0
        assert frame.rgb.shape == (info.height, info.width, 3)
        assert frame.rgb.dtype == np.uint8
        assert min(frame.rgb.shape[:2]) >= MIN_IMAGE_SIDE_PX
        assert frame.rgb.flags.c_contiguous


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder the examples overwrite (one mutated file at a time)."""
    return tmp_path_factory.mktemp("fuzz_scratch")


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    return tiny_checkpoint(tmp_path_factory.mktemp("fuzz_checkpoint") / "tiny.pt").read_bytes()


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    """A few edits of a file of `size` bytes: (flip, position, xor) / (truncate, length, 0) /
    (insert, position, byte) / (delete, position, count)."""
    edit = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, size - 1), st.integers(1, 255)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, size), st.integers(0, 255)),
        st.tuples(st.just("delete"), st.integers(0, size - 1), st.integers(1, 64)),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def mutate(content: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(content)
    for kind, position, value in edits:
        position = min(position, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[position] ^= value
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = bytes([value])
        elif kind == "delete":
            del data[position : position + value]
    return bytes(data)


@FUZZ
@given(st.data())
def test_a_mutated_checkpoint_loads_or_raises_a_checkpoint_error(checkpoint_bytes, scratch, data):
    path = scratch / "model.pt"
    path.write_bytes(mutate(checkpoint_bytes, data.draw(mutations(len(checkpoint_bytes)))))
    try:
        checkpoint = load_checkpoint(path)
        network_from_checkpoint(checkpoint, str(path))
    except CheckpointError as error:
        assert str(path) in str(error)  # noqa: PT017


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> Path:
    """A real 3-frame 64x48 flight bag written by the project's writer."""
    bag = tmp_path_factory.mktemp("fuzz_bag") / "flight"
    write_flight_bag(
        bag, FlightBagSpec(seconds=0.3, rate_hz=10.0, width=64, height=48), workers=1, progress=False
    )
    return bag


@FUZZ
@given(st.data())
def test_a_mutated_bag_reads_with_counted_skips_or_raises_a_bag_error(small_bag, scratch, data):
    """Any frame read_frames returns is whole and finite; bad messages are skipped and counted; a bag
    it cannot read at all raises BagError naming the bag."""
    mcap = next(small_bag.glob("*.mcap"))
    copy = scratch / "flight"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(small_bag, copy)
    (copy / mcap.name).write_bytes(mutate(mcap.read_bytes(), data.draw(mutations(mcap.stat().st_size))))
    try:
        frames, skipped = read_frames(copy, "camera")
    except BagError as error:
        assert str(copy) in str(error)  # noqa: PT017
        return
    assert set(skipped) >= {"undecodable", "no_camera_info", "no_ground_truth"}
    for frame in frames:
        assert frame["rgb"].ndim == 3
        assert frame["rgb"].shape[2] == 3
        assert frame["rgb"].dtype == np.uint8
        for key in ("K", "R", "t"):
            assert np.isfinite(frame[key]).all(), key
        assert frame["K"][0, 0] > 0
        assert frame["K"][1, 1] > 0


def test_an_unmutated_bag_and_checkpoint_read_whole(small_bag, checkpoint_bytes, tmp_path):
    """The fuzzed inputs themselves are good: every property above starts from a readable file."""
    frames, skipped = read_frames(small_bag, "camera")
    assert len(frames) == 3
    assert not any(skipped.values())
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint_bytes)
    network_from_checkpoint(load_checkpoint(path))
