"""`drone-pose bench pnp | multiview | gmm | net | tracker | fusion | soak | train`: benchmarks that
print JSON."""

from __future__ import annotations

import argparse
import json

from drone_pose.cli.arguments import (
    device_option,
    node_device_option,
    non_negative_float,
    positive_float,
    positive_int,
)


def _cmd_bench_pnp(args: argparse.Namespace) -> int:
    import torch

    from drone_pose.bench.pnp import run_benchmark

    report = run_benchmark(
        batch_sizes=tuple(args.batch_sizes),
        point_counts=tuple(args.points),
        problem_set=args.problems,
        devices=tuple(args.devices) if args.devices else None,
        dtype=torch.float64 if args.float64 else torch.float32,
        noise_px=args.noise,
        repeats=args.repeats,
    )
    print(json.dumps(report, indent=2))
    return 0


def _cmd_bench_multiview(args: argparse.Namespace) -> int:
    from drone_pose.bench.multiview import run_benchmark

    report = run_benchmark(tuple(args.views), tuple(args.groups), args.noise, args.repeats)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_bench_gmm(args: argparse.Namespace) -> int:
    from drone_pose.bench.gmm import run_benchmark

    report = run_benchmark(
        components=tuple(args.components),
        views=args.views,
        keypoints=args.keypoints,
        frames=args.frames,
        iterations=args.iterations,
        devices=tuple(args.devices) if args.devices else None,
        repeats=args.repeats,
    )
    print(json.dumps(report, indent=2))
    return 0


def _cmd_bench_net(args: argparse.Namespace) -> int:
    from drone_pose.bench.nets import run_benchmark

    report = run_benchmark(
        architectures=tuple(args.architectures),
        devices=tuple(args.devices) if args.devices else None,
        width=args.width,
        height=args.height,
        throughput_batch=args.batch,
        repeats=args.repeats,
    )
    print(json.dumps(report, indent=2))
    return 0


def _cmd_bench_tracker(args: argparse.Namespace) -> int:
    from drone_pose.ros.latency_benchmark import run_latency_benchmark

    report = run_latency_benchmark(
        args.checkpoint,
        drone=args.drone,
        seconds=args.seconds,
        rate_hz=args.rate,
        device=args.device,
        parameters=tuple(args.param or ()),
    )
    print(json.dumps(report, indent=2))
    return 0


def _cmd_bench_fusion(args: argparse.Namespace) -> int:
    from drone_pose.ros.fusion_benchmark import run_fusion_benchmark

    report = run_fusion_benchmark(
        args.checkpoint,
        drone=args.drone,
        cameras=args.cameras,
        seconds=args.seconds,
        rate_hz=args.rate,
        device=args.device,
        parameters=tuple(args.param or ()),
    )
    print(json.dumps(report, indent=2))
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print JSON").add_subparsers(
        dest="target", required=True
    )
    pnp = bench.add_parser("pnp", help="PnP methods next to OpenCV loops: times (ms) and accuracy")
    pnp.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 24, 1024])
    pnp.add_argument("--points", type=positive_int, nargs="+", default=[9, 20])
    pnp.add_argument("--problems", choices=["uava_m2ed", "generic"], default="uava_m2ed")
    pnp.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when available")
    pnp.add_argument("--float64", action="store_true", help="inputs in float64 (default float32)")
    pnp.add_argument("--noise", type=non_negative_float, default=1.0, help="keypoint noise, pixels")
    pnp.add_argument("--repeats", type=positive_int, default=5)
    pnp.set_defaults(run=_cmd_bench_pnp)
    multiview = bench.add_parser(
        "multiview",
        help="fusing V calibrated views: multi-view PnP and the fuse step next to single views (ms)",
    )
    multiview.add_argument("--views", type=positive_int, nargs="+", default=[2, 3, 4])
    multiview.add_argument("--groups", type=positive_int, nargs="+", default=[1, 16], help="groups per call")
    multiview.add_argument("--noise", type=non_negative_float, default=0.5, help="keypoint noise, pixels")
    multiview.add_argument("--repeats", type=positive_int, default=20)
    multiview.set_defaults(run=_cmd_bench_multiview)
    gmm = bench.add_parser(
        "gmm", help="heatmaps to Gaussian mixtures (MetaPose): ms per multi-camera frame, M = 1..4"
    )
    gmm.add_argument("--components", type=positive_int, nargs="+", default=[1, 2, 3, 4])
    gmm.add_argument("--views", type=positive_int, default=4)
    gmm.add_argument("--keypoints", type=positive_int, default=9)
    gmm.add_argument("--frames", type=positive_int, default=1, help="frames per call")
    gmm.add_argument("--iterations", type=positive_int, default=10, help="EM iterations")
    gmm.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when available")
    gmm.add_argument("--repeats", type=positive_int, default=100)
    gmm.set_defaults(run=_cmd_bench_gmm)
    from drone_pose.bench.nets import STUDY_ARCHITECTURES

    net = bench.add_parser("net", help="keypoint networks: parameters, GFLOPs, latency, throughput")
    net.add_argument("--architectures", nargs="+", default=list(STUDY_ARCHITECTURES))
    net.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when available")
    net.add_argument("--width", type=positive_int, default=320)
    net.add_argument("--height", type=positive_int, default=240)
    net.add_argument("--batch", type=positive_int, default=8, help="batch size of the throughput figure")
    net.add_argument("--repeats", type=positive_int, default=10)
    net.set_defaults(run=_cmd_bench_net)
    tracker = bench.add_parser(
        "tracker", help="tracker node over DDS: image publish -> pose receipt latency at a fixed rate"
    )
    tracker.add_argument("--checkpoint", help="default: the shipped checkpoint of --drone")
    tracker.add_argument("--drone", default="m2ed")
    tracker.add_argument("--seconds", type=positive_float, default=60.0)
    tracker.add_argument("--rate", type=positive_float, default=15.0, help="input frame rate, Hz")
    tracker.add_argument(
        "--device", type=node_device_option, default="cpu", help="the tracker's device (cpu, cuda, auto)"
    )
    tracker.add_argument("--param", action="append", help="extra tracker parameter name:=value")
    tracker.set_defaults(run=_cmd_bench_tracker)
    fusion = bench.add_parser(
        "fusion", help="fusion node over DDS: V cameras at a fixed rate, per-group latency, drops, memory"
    )
    fusion.add_argument("--checkpoint", help="default: the shipped checkpoint of --drone")
    fusion.add_argument("--drone", default="m2ed")
    fusion.add_argument("--cameras", type=int, choices=(1, 2, 3, 4), default=3)
    fusion.add_argument("--seconds", type=positive_float, default=60.0)
    fusion.add_argument("--rate", type=positive_float, default=10.0, help="frame rate of every camera, Hz")
    fusion.add_argument(
        "--device", type=node_device_option, default="cpu", help="the fusion node's device (cpu, cuda, auto)"
    )
    fusion.add_argument("--param", action="append", help="extra fusion node parameter name:=value")
    fusion.set_defaults(run=_cmd_bench_fusion)
    _add_bench_soak(bench)
    _add_bench_train(bench)


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    from drone_pose.ros.soak_benchmark import run_lifecycle_soak, run_soak

    parameters = tuple(args.param or ())
    if args.lifecycle_cycles:
        report = run_lifecycle_soak(
            args.checkpoint,
            drone=args.drone,
            cycles=args.lifecycle_cycles,
            device=args.device,
            warmup_cycles=min(args.warmup_cycles, args.lifecycle_cycles - 1),
            parameters=parameters,
        )
    else:
        report = run_soak(
            args.checkpoint,
            drone=args.drone,
            duration_s=args.duration_s,
            rate_hz=args.rate_hz,
            device=args.device,
            window_s=args.window_s,
            warmup_s=args.warmup_s,
            parameters=parameters,
        )
    print(json.dumps(report, indent=2))
    return 0


def _add_bench_soak(bench: argparse._SubParsersAction) -> None:
    soak = bench.add_parser(
        "soak",
        help="tracker node over DDS for a long run (RSS, latency drift, drops) or many lifecycle cycles",
    )
    soak.add_argument("--checkpoint", help="default: the shipped checkpoint of --drone")
    soak.add_argument("--drone", default="m2ed")
    soak.add_argument("--device", default="cpu", help="the tracker's device (cpu, cuda, auto)")
    soak.add_argument("--duration-s", type=float, default=3600.0, help="length of the soak, seconds")
    soak.add_argument("--rate-hz", type=float, default=30.0, help="input frame rate, Hz")
    soak.add_argument("--window-s", type=float, default=60.0, help="latency/memory reporting window, seconds")
    soak.add_argument("--warmup-s", type=float, default=60.0, help="memory growth and drift count from here")
    soak.add_argument(
        "--lifecycle-cycles",
        type=int,
        default=0,
        help="instead of a soak: this many configure/activate/deactivate/cleanup cycles",
    )
    soak.add_argument("--warmup-cycles", type=int, default=5, help="lifecycle memory growth counts from here")
    soak.add_argument("--param", action="append", help="extra tracker parameter name:=value")
    soak.set_defaults(run=_cmd_bench_soak)


def _cmd_bench_train(args: argparse.Namespace) -> int:
    from drone_pose.bench.train import run_benchmark

    report = run_benchmark(
        networks=tuple(args.networks),
        phases=tuple(args.phases),
        batch=args.batch,
        steps=args.steps,
        device=args.device,
        width=args.width,
        height=args.height,
    )
    print(json.dumps(report, indent=2))
    return 0


def _add_bench_train(bench: argparse._SubParsersAction) -> None:
    train = bench.add_parser(
        "train", help="training steps as the trainer runs them: images/s and forward/backward/step ms"
    )
    train.add_argument("--networks", nargs="+", default=["hrnet_lite"], help="presets, e.g. hrnet_w48")
    train.add_argument(
        "--phases", nargs="+", default=["heatmap", "pose"], choices=["heatmap", "pose", "mixture"]
    )
    train.add_argument("--batch", type=positive_int, default=24)
    train.add_argument("--steps", type=positive_int, default=10, help="timed steps (after 3 warm-up steps)")
    train.add_argument("--device", type=device_option, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--width", type=positive_int, default=320)
    train.add_argument("--height", type=positive_int, default=240)
    train.set_defaults(run=_cmd_bench_train)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `drone-pose` parser."""
    _add_bench(commands)
