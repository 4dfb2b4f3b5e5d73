"""`drone-pose export`: a checkpoint's heatmap model for deployment (ONNX, TorchScript)."""

from __future__ import annotations

import argparse
import json


def _cmd_export(args: argparse.Namespace) -> int:
    from drone_pose.inference.export import export_checkpoint

    report = export_checkpoint(
        args.checkpoint, args.out, args.format, verify=not args.no_verify, silhouette=not args.no_silhouette
    )
    print(json.dumps(report, indent=2))
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="a checkpoint's heatmap model as ONNX or TorchScript")
    export.add_argument("--checkpoint", required=True, help="drone_pose checkpoint (.pt)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("--out", help="output file (default: next to the checkpoint, .onnx or .ts)")
    export.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    export.add_argument(
        "--no-silhouette",
        action="store_true",
        help="a checkpoint with the silhouette head: export the heatmaps alone",
    )
    export.set_defaults(run=_cmd_export)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `drone-pose` parser."""
    _add_export(commands)
