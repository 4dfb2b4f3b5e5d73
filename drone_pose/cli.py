"""`drone-pose` command line: one entry point with subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from drone_pose import __version__

if TYPE_CHECKING:
    from drone_pose.nets.zoom import ZoomSettings


def _cmd_models(args: argparse.Namespace) -> int:
    from drone_pose.data.drones import available_drones, load_drone

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


def _cmd_bench_pnp(args: argparse.Namespace) -> int:
    import torch

    from drone_pose.pnp.benchmark import run_benchmark

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


def _cmd_bench_net(args: argparse.Namespace) -> int:
    from drone_pose.nets.benchmark import run_benchmark

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


def _cmd_export(args: argparse.Namespace) -> int:
    from drone_pose.export import export_checkpoint

    report = export_checkpoint(args.checkpoint, args.out, args.format, verify=not args.no_verify)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from drone_pose.data.generate import generate_dataset
    from drone_pose.data.poses import PoseSamplingConfig
    from drone_pose.data.synth import SceneConfig

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
    )
    summary = {key: index[key] for key in ("drone", "count", "seed", "camera", "statistics", "generation")}
    summary["splits"] = {split: sum(s["count"] for s in shards) for split, shards in index["splits"].items()}
    summary["out"] = str(args.out)
    print(json.dumps(summary, indent=2))
    return 0


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


def _cmd_train(args: argparse.Namespace) -> int:
    from drone_pose.train.config import load_config
    from drone_pose.train.trainer import train

    config = load_config(args.config, args.overrides)  # fails here, before any data is read
    summary = train(config, resume=args.resume, progress=not args.no_progress)
    if summary["rank"] != 0:
        return 0  # under torchrun only rank 0 reports
    last = summary["history"][-1] if summary["history"] else {}
    print(
        json.dumps(
            {
                "run_dir": summary["run_dir"],
                "best": summary["best"],
                "last_epoch": last,
                "swa": summary["swa"],
                "parameters": summary["parameters"],
                "train_s": round(summary["train_s"], 1),
            },
            indent=2,
        )
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from drone_pose.evaluate import evaluate_checkpoint

    summary = evaluate_checkpoint(
        args.checkpoint, args.data, zoom=args.zoom, flip_test=args.flip_test, **_split_options(args)
    )
    print(summary.pop("table"))
    print(summary.pop("size_table"))
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_calibrate_covariance(args: argparse.Namespace) -> int:
    from drone_pose.calibrate_covariance import calibrate_checkpoint

    options = _split_options(args)
    summary = calibrate_checkpoint(args.checkpoint, args.data, flip_test=args.flip_test, **options)
    print(json.dumps(summary, indent=2))
    return 0


def _add_flip_test_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--flip-test",
        choices=("checkpoint", "off", "zoom", "all"),  # drone_pose.nets.flip.FLIP_TEST_MODES
        default="checkpoint",
        help=f"{what}: checkpoint (its input.flip_test, default), off, zoom (the second pass only) or all",
    )


def _split_options(args: argparse.Namespace) -> dict[str, object]:
    """The options _add_split_arguments declares, as keyword arguments (checkpoint and data aside)."""
    keys = ("split", "out", "uava_drone", "device", "batch_size", "limit")
    return {key: getattr(args, key) for key in keys}


def _add_split_arguments(parser: argparse.ArgumentParser, split: str, split_help: str, out_help: str) -> None:
    """A checkpoint run over one split of a dataset: the arguments eval and calibrate-covariance share."""
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="dataset folder (drone-pose synth) or UAVA root")
    parser.add_argument("--split", default=split, help=split_help)
    parser.add_argument("--uava-drone", help="read --data as a UAVA root for this drone")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N samples")


def _zoom_option(text: str) -> ZoomSettings | str | None:
    """--zoom: checkpoint (its input.zoom), off, or TARGET_PX[,MAX_ZOOM]."""
    from drone_pose.nets.zoom import ZoomSettings

    if text in ("checkpoint", "off"):
        return None if text == "off" else text
    try:
        values = [float(v) for v in text.split(",")]
        if len(values) > 2:
            raise ValueError("at most two numbers")
        return ZoomSettings(*values)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"--zoom must be checkpoint, off or TARGET_PX[,MAX_ZOOM], got {text!r} ({error})"
        ) from None


def _cmd_keypoint_budget(args: argparse.Namespace) -> int:
    from drone_pose.keypoint_budget import keypoint_budget

    summary = keypoint_budget(args.data, args.split, args.sigmas, args.limit, args.seed, args.out)
    print(summary.pop("table"))
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from drone_pose.train.reproduce import reproduce

    network = args.network
    if network is not None and network.lstrip().startswith("{"):
        network = json.loads(network)
    summary = reproduce(
        args.out,
        args.results,
        drones=tuple(args.drones),
        tables=tuple(args.tables),
        epochs=args.epochs,
        images=args.images,
        network=network,
        width=args.width,
        height=args.height,
        extra=tuple(args.set or ()),
        init=_drone_checkpoints(args.init or ()),
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _drone_checkpoints(pairs: Sequence[str]) -> dict[str, str]:
    """`DRONE=CHECKPOINT` arguments as a mapping; a malformed one or a missing file exits with a message."""
    result = {}
    for pair in pairs:
        drone, sep, path = pair.partition("=")
        if not sep or not drone or not path:
            raise SystemExit(f"drone-pose reproduce: --init {pair!r} must look like DRONE=CHECKPOINT")
        if not Path(path).is_file():
            raise SystemExit(f"drone-pose reproduce: --init {drone}: checkpoint not found: {path}")
        result[drone] = path
    return result


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


def _cmd_eval_bag(args: argparse.Namespace) -> int:
    from drone_pose.bags.evaluate_bag import evaluate_bag

    summary = evaluate_bag(
        args.bag,
        args.checkpoint,
        args.out,
        camera=args.camera,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(summary.pop("table"))
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    from drone_pose.ros.launch_plan import LaunchArgumentError
    from drone_pose.ros.launcher import main_launch

    try:
        return main_launch(args.launch, args.arguments, dry_run=args.dry_run, duration_s=args.duration)
    except LaunchArgumentError as error:
        print(f"drone-pose launch: {error}", file=sys.stderr)
        return 2


def _cmd_model_card(args: argparse.Namespace) -> int:
    from drone_pose.model_card import card_training_record, training_record, write_model_card

    if (args.run_dir is None) == (args.training_from_card is None):
        print("drone-pose model-card: give exactly one of --run-dir or --training-from-card", file=sys.stderr)
        return 2
    if args.run_dir is not None:
        training, note, command = training_record(args.run_dir), args.note, args.data_command
    else:
        training = card_training_record(args.training_from_card)
        note = args.note if args.note is not None else training["note"]
        command = args.data_command or training["command"]
    if not command:
        print("drone-pose model-card: --data-command is required", file=sys.stderr)
        return 2
    figures = write_model_card(
        args.checkpoint, training, args.heldout, args.out, command, args.heldout_command, note=note
    )
    print(json.dumps(figures["heldout"], indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from drone_pose.ros.demo import run_demo

    run_demo(
        args.out,
        drone=args.drone,
        seconds=args.seconds,
        rate_hz=args.rate,
        checkpoint=args.checkpoint,
        device=args.device,
        log=lambda line: print(line, flush=True),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drone-pose", description="6-DoF drone pose estimation tools.")
    parser.add_argument("--version", action="version", version=f"drone_pose {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("models", help="list the built-in drone models as JSON").set_defaults(run=_cmd_models)
    commands.add_parser("info", help="versions, data folders and compute devices").set_defaults(run=_cmd_info)
    demo = commands.add_parser(
        "demo", help="synthetic flight -> replay over DDS -> tracker node -> accuracy and latency report"
    )
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--drone", default="m2ed")
    demo.add_argument("--seconds", type=float, default=10.0, help="flight length")
    demo.add_argument("--rate", type=float, default=15.0, help="camera frame rate, Hz")
    demo.add_argument("--checkpoint", help="default: the shipped checkpoint of --drone")
    demo.add_argument("--device", default="cpu", help="the tracker's device (cpu, cuda, auto)")
    demo.set_defaults(run=_cmd_demo)
    bench = commands.add_parser("bench", help="benchmarks that print JSON").add_subparsers(
        dest="target", required=True
    )
    pnp = bench.add_parser("pnp", help="PnP methods next to OpenCV loops: times (ms) and accuracy")
    pnp.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 24, 1024])
    pnp.add_argument("--points", type=int, nargs="+", default=[9, 20])
    pnp.add_argument("--problems", choices=["uava_m2ed", "generic"], default="uava_m2ed")
    pnp.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when available")
    pnp.add_argument("--float64", action="store_true", help="inputs in float64 (default float32)")
    pnp.add_argument("--noise", type=float, default=1.0, help="keypoint noise, pixels")
    pnp.add_argument("--repeats", type=int, default=5)
    pnp.set_defaults(run=_cmd_bench_pnp)
    from drone_pose.nets.benchmark import STUDY_ARCHITECTURES

    net = bench.add_parser("net", help="keypoint networks: parameters, GFLOPs, latency, throughput")
    net.add_argument("--architectures", nargs="+", default=list(STUDY_ARCHITECTURES))
    net.add_argument("--devices", nargs="+", help="default: cpu, plus cuda when available")
    net.add_argument("--width", type=int, default=320)
    net.add_argument("--height", type=int, default=240)
    net.add_argument("--batch", type=int, default=8, help="batch size of the throughput figure")
    net.add_argument("--repeats", type=int, default=10)
    net.set_defaults(run=_cmd_bench_net)
    tracker = bench.add_parser(
        "tracker", help="tracker node over DDS: image publish -> pose receipt latency at a fixed rate"
    )
    tracker.add_argument("--checkpoint", help="default: the shipped checkpoint of --drone")
    tracker.add_argument("--drone", default="m2ed")
    tracker.add_argument("--seconds", type=float, default=60.0)
    tracker.add_argument("--rate", type=float, default=15.0, help="input frame rate, Hz")
    tracker.add_argument("--device", default="cpu", help="the tracker's device (cpu, cuda, auto)")
    tracker.add_argument("--param", action="append", help="extra tracker parameter name:=value")
    tracker.set_defaults(run=_cmd_bench_tracker)

    synth = commands.add_parser("synth", help="render a synthetic UAVA-like dataset (sharded, split)")
    synth.add_argument("--drone", default="m2ed", help="built-in drone name or drone YAML path")
    synth.add_argument("--count", type=int, default=1000)
    synth.add_argument("--out", required=True, help="output folder (created; must be empty)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, help="processes (default: one per core)")
    synth.add_argument("--shard-size", type=int, default=256)
    synth.add_argument(
        "--splits", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST")
    )
    synth.add_argument("--width", type=int, help="image width (default 320, the UAVA camera)")
    synth.add_argument("--height", type=int, help="image height (default 240)")
    synth.add_argument("--backgrounds", help="folder of background photos (used for half the images)")
    synth.add_argument(
        "--allow-outside", action="store_true", help="keep poses whose keypoints leave the image (robustness)"
    )
    synth.add_argument("--lossless", action="store_true", help="PNG images instead of JPEG quality 95")
    synth.set_defaults(run=_cmd_synth)

    bag = commands.add_parser("synth-bag", help="render a synthetic drone flight into a rosbag2 file")
    bag.add_argument("--drone", default="m2ed", help="built-in drone name or drone YAML path")
    bag.add_argument("--seconds", type=float, default=20.0)
    bag.add_argument("--rate", type=float, default=30.0, help="camera frame rate, Hz")
    bag.add_argument("--cameras", type=int, default=1, choices=[1, 2, 3, 4], help="cameras in the rig")
    bag.add_argument("--out", required=True, help="bag folder to create (must not exist)")
    bag.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    bag.add_argument("--seed", type=int, default=0)
    bag.add_argument("--width", type=int, default=320)
    bag.add_argument("--height", type=int, default=240)
    bag.add_argument("--backgrounds", help="folder of background photos")
    bag.add_argument("--workers", type=int, help="render processes (default: one per core)")
    bag.set_defaults(run=_cmd_synth_bag)

    train = commands.add_parser("train", help="train a keypoint network (config YAML + key=value overrides)")
    train.add_argument("--config", help="experiment YAML (config/train/*.yaml); default: built-in defaults")
    train.add_argument("overrides", nargs="*", help="overrides such as epochs=2 loss.kind=pose data.path=DIR")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_cmd_train)

    grid = commands.add_parser("reproduce", help="the study's Tables 3-7 at a chosen scale -> results page")
    grid.add_argument("--out", default="reproduce", help="work folder: data/, runs/, reports/")
    grid.add_argument("--results", default="docs/results.md", help="the results page to write")
    grid.add_argument("--drones", nargs="+", default=["m2ed", "tello"])
    grid.add_argument("--tables", type=int, nargs="+", default=[3, 4, 5, 6, 7], choices=[3, 4, 5, 6, 7])
    grid.add_argument("--epochs", type=int, default=44, help="epochs per run (the study: 44)")
    grid.add_argument("--images", type=int, default=20000, help="rendered images per drone (80/10/10 split)")
    grid.add_argument("--network", help="replace HRNet-W48 (preset name or JSON mapping), e.g. hrnet_lite")
    grid.add_argument("--width", type=int, default=320)
    grid.add_argument("--height", type=int, default=240)
    grid.add_argument("--set", action="append", help="extra training override for every run (key=value)")
    grid.add_argument(
        "--init",
        action="append",
        metavar="DRONE=CHECKPOINT",
        help="start that drone's rows from a checkpoint where its network fits (others: scratch)",
    )
    grid.add_argument("--no-progress", action="store_true")
    grid.set_defaults(run=_cmd_reproduce)

    replay = commands.add_parser(
        "replay", help="publish a rosbag2 file over DDS with its timing (ros2 bag play)"
    )
    replay.add_argument("bag", help="rosbag2 folder (MCAP or sqlite3)")
    replay.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    replay.add_argument("--loop", action="store_true")
    replay.add_argument("--topics", nargs="+", help="only these topics")
    replay.add_argument("--clock", action="store_true", help="publish /clock from the bag time")
    replay.add_argument("--wait-for", help="wait until this topic has a subscriber before playing")
    replay.add_argument("--wait-timeout", type=float, default=30.0)
    replay.add_argument(
        "--delay", type=float, default=0.5, help="seconds between discovery and the first message"
    )
    replay.set_defaults(run=_cmd_replay)

    bag_eval = commands.add_parser(
        "eval-bag", help="the estimator over a bag's frames vs its ground truth (offline)"
    )
    bag_eval.add_argument(
        "bag", help="rosbag2 folder with /<camera>/image_raw, camera_info, ground_truth/pose"
    )
    bag_eval.add_argument("--checkpoint", help="default: the shipped checkpoint of the bag's drone")
    bag_eval.add_argument(
        "--out", required=True, help="report folder (results, frames.csv, plots, estimates/)"
    )
    bag_eval.add_argument("--camera", default="camera", help="camera name in the bag's topics")
    bag_eval.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bag_eval.add_argument("--batch-size", type=int, default=8)
    bag_eval.set_defaults(run=_cmd_eval_bag)

    launch = commands.add_parser(
        "launch",
        help="start a launch's nodes like `ros2 launch drone_pose NAME.launch.py` (no ros2 CLI needed)",
    )
    launch.add_argument("launch", choices=["tracker", "multi_camera"])
    launch.add_argument("arguments", nargs="*", help="launch arguments name:=value (e.g. checkpoint:=m.pt)")
    launch.add_argument("--dry-run", action="store_true", help="print the environment and commands only")
    launch.add_argument("--duration", type=float, help="stop the nodes after this many seconds")
    launch.set_defaults(run=_cmd_launch)

    evaluation = commands.add_parser("eval", help="a checkpoint's metric table on a dataset split (+ plots)")
    _add_split_arguments(
        evaluation,
        "test",
        "the split to score",
        "report folder: results.md/json, samples.csv, plots, overlays",
    )
    evaluation.add_argument(
        "--zoom",
        type=_zoom_option,
        default="checkpoint",
        help="zoomed second pass for small drones: checkpoint (as trained, default), off, or "
        "TARGET_PX[,MAX_ZOOM]",
    )
    _add_flip_test_argument(evaluation, "network passes averaged with their mirror image")
    evaluation.set_defaults(run=_cmd_eval)

    calibrate = commands.add_parser(
        "calibrate-covariance",
        help="fit a checkpoint's pose covariance scales on labelled data and store them in it",
    )
    _add_split_arguments(
        calibrate,
        "val",
        "a split neither trained nor tested on",
        "write the calibrated checkpoint here (default: in place)",
    )
    _add_flip_test_argument(
        calibrate, "network passes averaged with their mirror image, written into the checkpoint"
    )
    calibrate.set_defaults(run=_cmd_calibrate_covariance)

    budget = commands.add_parser(
        "keypoint-budget",
        help="metrics of ground-truth keypoints + Gaussian noise: the keypoint accuracy a target needs",
    )
    budget.add_argument("--data", required=True, help="dataset folder (drone-pose synth)")
    budget.add_argument("--split", default="test")
    budget.add_argument("--sigmas", type=float, nargs="+", help="noise stds, px (default 0 0.1 0.25 0.5 1 2)")
    budget.add_argument("--limit", type=int, help="only the first N samples")
    budget.add_argument("--seed", type=int, default=0, help="seed of the noise draw")
    budget.add_argument("--out", help="also write the rows as JSON to this file")
    budget.set_defaults(run=_cmd_keypoint_budget)

    card = commands.add_parser("model-card", help="ship a checkpoint: copy it and write its model card")
    card.add_argument("--checkpoint", required=True, help="the run's best.pt")
    card.add_argument("--run-dir", help="the training run folder (config.yaml, metrics.csv)")
    card.add_argument(
        "--training-from-card",
        help="instead of --run-dir: an earlier model card's .json (re-card a shipped checkpoint; its data "
        "command and note are kept unless given)",
    )
    card.add_argument("--heldout", required=True, help="held-out dataset folder (test split)")
    card.add_argument("--out", required=True, help="output stem, e.g. models/checkpoints/m2ed_hrnet_lite")
    card.add_argument("--data-command", help="how the training data was rendered (required with --run-dir)")
    card.add_argument("--heldout-command", required=True, help="how the held-out set was rendered")
    card.add_argument("--note", help="free text for the card (e.g. how a multi-stage run was made)")
    card.set_defaults(run=_cmd_model_card)

    export = commands.add_parser("export", help="a checkpoint's heatmap model as ONNX or TorchScript")
    export.add_argument("--checkpoint", required=True, help="drone_pose checkpoint (.pt)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("--out", help="output file (default: next to the checkpoint, .onnx or .ts)")
    export.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    export.set_defaults(run=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
