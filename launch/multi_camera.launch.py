"""ros2 launch drone_pose multi_camera.launch.py cameras:=camera0,camera1 [image_suffix:=image_raw]
[fusion:=true] [rig_frame:=] [rig_file:=] [drone_frame:=drone] [checkpoint:=] [device:=auto]
[params_file:=] [rviz:=false] [use_sim_time:=false]

fusion:=true (default): one fusion node reading /<camera>/<image_suffix> and /<camera>/camera_info
of every camera and publishing one pose in the rig frame (docs/fusion_node.md). fusion:=false: one
tracker per camera, in the camera's namespace, publishing TF to drone_<camera>. Same plan as
`drone-pose launch multi_camera`.
"""

from drone_pose.ros.launch_actions import launch_description
from drone_pose.ros.launch_plan import MULTI_CAMERA_ARGUMENTS


def generate_launch_description():
    return launch_description("multi_camera", MULTI_CAMERA_ARGUMENTS)
