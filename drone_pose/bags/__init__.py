"""rosbag2 files without ROS: message building, writing and reading through `rosbags`."""
