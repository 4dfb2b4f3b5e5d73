"""ROS 2 adapters (rclpy): nodes, message conversions, TF, QoS. The only package that imports rclpy."""
