"""Helper process: publishes numbered rgb8 frames with sensor-data QoS once a subscriber matches.

Frame i carries i in its first four bytes (little-endian) and stamp = i / rate seconds.
Prints "SENT <count>" when done.
"""

import argparse
import sys
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from drone_pose.ros.image_conversions import numpy_to_image
from drone_pose.ros.qos import sensor_data_qos


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", default="camera/image_raw")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=90)
    parser.add_argument("--match-timeout", type=float, default=20.0)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("image_publisher")
    publisher = node.create_publisher(Image, args.topic, sensor_data_qos())
    deadline = time.monotonic() + args.match_timeout
    while publisher.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print("NO_SUBSCRIBER", flush=True)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)  # let the data path (SHM or UDP locators) settle after discovery

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    period = 1.0 / args.rate
    start = time.monotonic()
    for index in range(args.count):
        frame.reshape(-1)[:4] = np.frombuffer(np.uint32(index).tobytes(), dtype=np.uint8)
        stamp_ns = round(index * period * 1e9)
        stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        publisher.publish(numpy_to_image(frame, "rgb8", stamp, "camera_optical"))
        delay = start + (index + 1) * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(f"SENT {args.count}", flush=True)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
