"""ros2 launch drone_pose tracker.launch.py [namespace:=] [image:=] [camera_info:=] [checkpoint:=]
[device:=auto] [drone_frame:=drone] [image_transport:=raw] [params_file:=] [rviz:=false] [use_sim_time:=false]

One tracker node with config/tracker.yaml and the Fast DDS shared-memory profile. The node set comes
from drone_pose.ros.launch_plan, which `drone-pose launch tracker ...` also runs.
"""

from drone_pose.ros.launch_actions import launch_description
from drone_pose.ros.launch_plan import TRACKER_ARGUMENTS


def generate_launch_description():
    return launch_description("tracker", TRACKER_ARGUMENTS)
