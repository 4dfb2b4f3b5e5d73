"""Helper process: publishes camera_optical <- drone on /tf at 20 Hz and base_link <- camera_optical
once on /tf_static with drone_pose's broadcasters, prints READY, and runs until terminated."""

import contextlib
import sys

import numpy as np
import rclpy

from drone_pose.ros.tf import StaticTransformBroadcaster, TransformBroadcaster, transform_stamped

DYNAMIC = ([0.0, 0.0, 0.38268343, 0.92387953], [0.5, -0.25, 4.0])  # 45 deg about z
STATIC = ([-0.5, 0.5, -0.5, 0.5], [0.1, 0.0, 0.2])  # optical frame from a body-frame camera mount


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("tf_publisher")
    dynamic = TransformBroadcaster(node)
    static = StaticTransformBroadcaster(node)
    static.send(
        [
            transform_stamped(
                np.array(STATIC[0]),
                np.array(STATIC[1]),
                node.get_clock().now().to_msg(),
                "base_link",
                "camera_optical",
            )
        ]
    )

    def tick() -> None:
        stamp = node.get_clock().now().to_msg()
        dynamic.send(
            [transform_stamped(np.array(DYNAMIC[0]), np.array(DYNAMIC[1]), stamp, "camera_optical", "drone")]
        )

    node.create_timer(0.05, tick)
    print("READY", flush=True)
    with contextlib.suppress(KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        rclpy.spin(node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
