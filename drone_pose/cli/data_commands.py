"""`drone-pose models | info | synth | synth-bag`: drone models, the installation, synthetic data."""

from __future__ import annotations

import argparse
import json

from drone_pose import __version__
from drone_pose.cli.arguments import positive_float, positive_int
from drone_pose.errors import UserError


def _cmd_models(args: argparse.Namespace) -> int:
    from drone_pose.drones import available_drones, load_drone

    rows = []
    for name in available_drones():
        drone = load_drone(name)
        rows.append(
            {
                "name": drone.name,
                "description": drone.description,
                "keypoints": list(drone.keypoint_names),
                "diagonal_m": drone.diagonal,
                "dimensions_m": drone.dimensions,
                "mesh_vertices": int(drone.vertices.shape[0]),
                "mesh_faces": int(drone.faces.shape[0]),
                "parts": list(drone.part_names),
            }
        )
    print(json.dumps(rows, indent=2))
    return 0


def _add_models(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("models", help="list the built-in drone models as JSON").set_defaults(run=_cmd_models)


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from drone_pose.resources import share_dir

    info = {
        "drone_pose": __version__,
        "share_dir": str(share_dir()),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    print(json.dumps(info, indent=2))
    return 0


def _add_info(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("info", help="versions, data folders and compute devices").set_defaults(run=_cmd_info)


def _cmd_synth(args: argparse.Namespace) -> int:
    from drone_pose.data.generate import generate_dataset
    from drone_pose.data.poses import PoseSamplingConfig
    from drone_pose.data.rig_poses import RigConfig
    from drone_pose.data.synth import SceneConfig

    rig = None
    if args.cameras is not None or args.rig is not None:
        layout = args.rig or "ring"
        cameras = args.cameras if args.cameras is not None else (2 if layout == "stereo" else 3)
        try:
            rig = RigConfig(cameras, layout, args.rig_jitter, args.baseline)
        except ValueError as error:
            raise UserError(str(error)) from error
    index = generate_dataset(
        args.drone,
        args.count,
        args.out,
        seed=args.seed,
        workers=args.workers,
        shard_size=args.shard_size,
        fractions=tuple(args.splits),
        width=args.width,
        height=args.height,
        scene=SceneConfig(background_folder=args.backgrounds),
        poses=PoseSamplingConfig(keep_inside=not args.allow_outside),
        lossless=args.lossless,
        rig=rig,
    )
    summary = {key: index[key] for key in ("drone", "count", "seed", "camera", "statistics", "generation")}
    summary["splits"] = {split: sum(s["count"] for s in shards) for split, shards in index["splits"].items()}
    if "rig" in index:
        summary["rig"] = index["rig"]
    summary["out"] = str(args.out)
    print(json.dumps(summary, indent=2))
    return 0


def _add_synth(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser("synth", help="render a synthetic UAVA-like dataset (sharded, split)")
    synth.add_argument("--drone", default="m2ed", help="built-in drone name or drone YAML path")
    synth.add_argument("--count", type=positive_int, default=1000)
    synth.add_argument(
        "--out",
        required=True,
        help="output folder (created; must be empty, or an interrupted synth with these settings: resumed)",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=positive_int, help="processes (default: one per core)")
    synth.add_argument("--shard-size", type=positive_int, default=256)
    synth.add_argument(
        "--splits", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST")
    )
    synth.add_argument("--width", type=positive_int, help="image width (default 320, the UAVA camera)")
    synth.add_argument("--height", type=positive_int, help="image height (default 240)")
    synth.add_argument("--backgrounds", help="folder of background photos (used for half the images)")
    synth.add_argument(
        "--allow-outside", action="store_true", help="keep poses whose keypoints leave the image (robustness)"
    )
    synth.add_argument("--lossless", action="store_true", help="PNG images instead of JPEG quality 95")
    synth.add_argument(
        "--cameras",
        type=positive_int,
        help="multi-camera groups: each of --count samples is one drone pose seen by this many cameras",
    )
    synth.add_argument("--rig", choices=("ring", "arc", "stereo"), help="camera layout (default ring)")
    synth.add_argument("--rig-jitter", type=float, default=0.0, help="azimuth noise of the rig, 0..1")
    synth.add_argument("--baseline", type=positive_float, default=0.3, help="stereo baseline, metres")
    synth.set_defaults(run=_cmd_synth)


def _cmd_synth_bag(args: argparse.Namespace) -> int:
    from drone_pose.bags.flight_bag import FlightBagSpec, write_flight_bag

    spec = FlightBagSpec(
        drone=args.drone,
        seconds=args.seconds,
        rate_hz=args.rate,
        cameras=args.cameras,
        seed=args.seed,
        width=args.width,
        height=args.height,
        background_folder=args.backgrounds,
    )
    print(json.dumps(write_flight_bag(args.out, spec, storage=args.storage, workers=args.workers), indent=2))
    return 0


def _add_synth_bag(commands: argparse._SubParsersAction) -> None:
    bag = commands.add_parser("synth-bag", help="render a synthetic drone flight into a rosbag2 file")
    bag.add_argument("--drone", default="m2ed", help="built-in drone name or drone YAML path")
    bag.add_argument("--seconds", type=positive_float, default=20.0)
    bag.add_argument("--rate", type=positive_float, default=30.0, help="camera frame rate, Hz")
    bag.add_argument("--cameras", type=int, default=1, choices=[1, 2, 3, 4], help="cameras in the rig")
    bag.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    bag.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    bag.add_argument("--seed", type=int, default=0)
    bag.add_argument("--width", type=positive_int, default=320)
    bag.add_argument("--height", type=positive_int, default=240)
    bag.add_argument("--backgrounds", help="folder of background photos")
    bag.add_argument("--workers", type=positive_int, help="render processes (default: one per core)")
    bag.set_defaults(run=_cmd_synth_bag)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `drone-pose` parser."""
    _add_models(commands)
    _add_info(commands)
    _add_synth(commands)
    _add_synth_bag(commands)
