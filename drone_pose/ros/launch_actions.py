"""launch_ros actions for a LaunchPlan (used by the files in launch/; needs launch and launch_ros)."""

from __future__ import annotations

from typing import Any

from drone_pose.ros.launch_plan import PLANS, LaunchPlan


def plan_actions(plan: LaunchPlan) -> list[Any]:
    """SetEnvironmentVariable for the plan's environment, then one launch_ros Node per process."""
    from launch.actions import SetEnvironmentVariable
    from launch_ros.actions import Node

    actions: list[Any] = [SetEnvironmentVariable(key, value) for key, value in plan.environment.items()]
    for node in plan.nodes:
        actions.append(
            Node(
                package=node.package,
                executable=node.executable,
                name=node.name,
                namespace=node.namespace or None,
                parameters=[*node.params_files, node.parameters],
                remappings=list(node.remappings),
                arguments=list(node.arguments),
                output="screen",
            )
        )
    return actions


def launch_description(plan_name: str, defaults: dict[str, str]) -> Any:
    """A LaunchDescription declaring `defaults` as launch arguments and starting plan `plan_name`."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    def nodes(context: Any) -> list[Any]:
        given = {name: LaunchConfiguration(name).perform(context) for name in defaults}
        return plan_actions(PLANS[plan_name](given))

    arguments = [DeclareLaunchArgument(name, default_value=value) for name, value in defaults.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=nodes)])
