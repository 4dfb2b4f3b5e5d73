"""`drone-pose demo | launch | replay`: the ROS 2 side (nodes over real DDS)."""

from __future__ import annotations

import argparse
import json
import sys

from drone_pose.cli.arguments import node_device_option, non_negative_float, positive_float


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.cameras > 1:
        from drone_pose.ros.fusion_demo import run_fusion_demo

        run_fusion_demo(
            args.out,
            drone=args.drone,
            cameras=args.cameras,
            seconds=args.seconds,
            rate_hz=args.rate if args.rate is not None else 5.0,
            checkpoint=args.checkpoint,
            device=args.device,
            log=lambda line: print(line, flush=True),
        )
        return 0
    from drone_pose.ros.demo import run_demo

    run_demo(
        args.out,
        drone=args.drone,
        seconds=args.seconds,
        rate_hz=args.rate if args.rate is not None else 15.0,
        checkpoint=args.checkpoint,
        device=args.device,
        log=lambda line: print(line, flush=True),
    )
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="synthetic flight -> replay over DDS -> tracker node -> accuracy and latency report"
    )
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--drone", default="m2ed")
    demo.add_argument("--seconds", type=positive_float, default=10.0, help="flight length")
    demo.add_argument(
        "--rate", type=positive_float, help="camera frame rate, Hz (default 15; 5 with several cameras)"
    )
    demo.add_argument(
        "--cameras",
        type=int,
        choices=(1, 2, 3, 4),
        default=1,
        help="several: a rig's flight into the fusion node (extrinsics from /tf_static)",
    )
    demo.add_argument("--checkpoint", help="default: the shipped checkpoint of --drone")
    demo.add_argument(
        "--device", type=node_device_option, default="cpu", help="the tracker's device (cpu, cuda, auto)"
    )
    demo.set_defaults(run=_cmd_demo)


def _cmd_launch(args: argparse.Namespace) -> int:
    from drone_pose.ros.launch_plan import LaunchArgumentError
    from drone_pose.ros.launcher import main_launch

    try:
        return main_launch(args.launch, args.arguments, dry_run=args.dry_run, duration_s=args.duration)
    except LaunchArgumentError as error:
        print(f"drone-pose launch: {error}", file=sys.stderr)
        return 2


def _add_launch(commands: argparse._SubParsersAction) -> None:
    launch = commands.add_parser(
        "launch",
        help="start a launch's nodes like `ros2 launch drone_pose NAME.launch.py` (no ros2 CLI needed)",
    )
    launch.add_argument("launch", choices=["tracker", "multi_camera"])
    launch.add_argument("arguments", nargs="*", help="launch arguments name:=value (e.g. checkpoint:=m.pt)")
    launch.add_argument("--dry-run", action="store_true", help="print the environment and commands only")
    launch.add_argument("--duration", type=positive_float, help="stop the nodes after this many seconds")
    launch.set_defaults(run=_cmd_launch)


def _cmd_replay(args: argparse.Namespace) -> int:
    from drone_pose.ros.replay import replay_bag

    summary = replay_bag(
        args.bag,
        rate=args.rate,
        loop=args.loop,
        topics=args.topics,
        clock=args.clock,
        wait_for=args.wait_for,
        wait_timeout_s=args.wait_timeout,
        delay_s=args.delay,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _add_replay(commands: argparse._SubParsersAction) -> None:
    replay = commands.add_parser(
        "replay", help="publish a rosbag2 file over DDS with its timing (ros2 bag play)"
    )
    replay.add_argument("bag", help="rosbag2 folder (MCAP or sqlite3)")
    replay.add_argument("--rate", type=positive_float, default=1.0, help="playback speed factor")
    replay.add_argument("--loop", action="store_true")
    replay.add_argument("--topics", nargs="+", help="only these topics")
    replay.add_argument("--clock", action="store_true", help="publish /clock from the bag time")
    replay.add_argument("--wait-for", help="wait until this topic has a subscriber before playing")
    replay.add_argument("--wait-timeout", type=positive_float, default=30.0)
    replay.add_argument(
        "--delay",
        type=non_negative_float,
        default=0.5,
        help="seconds between discovery and the first message",
    )
    replay.set_defaults(run=_cmd_replay)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `drone-pose` parser."""
    _add_demo(commands)
    _add_launch(commands)
    _add_replay(commands)
