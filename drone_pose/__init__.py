"""drone_pose: real-time 6-DoF drone pose estimation from camera images.

The algorithm (everything outside ``drone_pose.ros``) depends on torch, numpy and OpenCV only and
never imports rclpy; ROS nodes in ``drone_pose.ros`` are thin adapters around it.
"""

__version__ = "0.1.0"
