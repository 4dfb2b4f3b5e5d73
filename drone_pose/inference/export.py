"""Export a checkpoint's heatmap model to ONNX or TorchScript for deployment, and verify it.

The exported graph is `HeatmapPredictor`: float RGB images [B,3,H,W] in [0, 1] at the checkpoint's
input size -> heatmaps [B,K,h,w] at the finest resolution (normalisation and HigherHRNet
aggregation included), with a dynamic batch dimension. The checkpoint's description (drone
keypoints, input size, network, training summary) travels inside the file: ONNX metadata_props
key "drone_pose", TorchScript extra file "drone_pose.json". Decoding and PnP stay in the caller, and
so do the zoomed second pass (input.zoom) and the flip test (input.flip_test): for the latter the
description adds "flip_test_permutation", the heatmap channel order of the mirrored image (run the
model on the image and its left-right mirror, flip the second heatmaps back, reorder their channels
by it and average; drone_pose.nets.flip).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from drone_pose.atomic_files import atomic_path
from drone_pose.inference.checkpoint import CheckpointError, load_checkpoint, network_from_checkpoint
from drone_pose.nets.flip import validate_flip_test
from drone_pose.nets.predictor import HeatmapPredictor

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
METADATA_KEY = "drone_pose"
MAX_BATCH = 256
VERIFY_TOLERANCE = 1e-3  # largest exported-vs-PyTorch heatmap difference, times the peak (>= 1)


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce PyTorch's heatmaps (a bug, not the user's input)."""


def predictor_from_checkpoint(checkpoint: dict[str, Any], where: str) -> HeatmapPredictor:
    """The checkpoint's network wrapped with its normalisation and output aggregation, in eval mode."""
    spec = checkpoint["input"]
    network = network_from_checkpoint(checkpoint, where)
    keypoints = len(checkpoint["drone"]["keypoints"])
    return HeatmapPredictor(network, keypoints, tuple(spec["mean"]), tuple(spec["std"])).eval()


def export_description(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What travels in the exported file: the checkpoint without its weights, plus the flip test's
    channel permutation when the checkpoint asks for the flip test (module docstring)."""
    description = {key: value for key, value in checkpoint.items() if key != "state_dict"}
    mode = checkpoint["input"].get("flip_test", "off")
    permutation = validate_flip_test(mode, np.asarray(checkpoint["drone"]["keypoints"]))
    if permutation is not None:
        description["flip_test_permutation"] = permutation
    return description


def export_checkpoint(
    checkpoint_path: str | Path,
    output: str | Path | None = None,
    export_format: ExportFormat = "onnx",
    verify: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the deployable model and return a report (path, shapes, size, seconds, verification).

    verify runs the exported file on random images at batch 1 and 3 (ONNX through onnxruntime,
    TorchScript through torch.jit.load) and reports the largest absolute heatmap difference from
    PyTorch (verify_export). The file is written and verified under a temporary name beside
    `output` and takes its name only then (drone_pose.atomic_files): a failed export leaves what was
    there. Raises CheckpointError for a bad checkpoint (non-finite heatmaps included),
    OutputPathError for an output that is not a regular file, ValueError for an unknown format.
    """
    if export_format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    checkpoint = load_checkpoint(checkpoint_path)
    predictor = predictor_from_checkpoint(checkpoint, str(checkpoint_path))
    width, height = checkpoint["input"]["width"], checkpoint["input"]["height"]
    output = Path(output) if output else Path(checkpoint_path).with_suffix(SUFFIXES[export_format])
    description = json.dumps(export_description(checkpoint), sort_keys=True)
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(seed))

    with atomic_path(output) as temporary:  # verified before it takes the output's name
        start = time.perf_counter()
        serialised = (_onnx_bytes if export_format == "onnx" else _torchscript_bytes)(
            predictor, example, description
        )
        temporary.write_bytes(serialised)  # a full disk raises OSError here, before the rename
        report: dict[str, Any] = {
            "format": export_format,
            "path": str(output),
            "bytes": len(serialised),
            "export_s": round(time.perf_counter() - start, 3),
            "input": {"name": "images", "shape": ["batch", 3, height, width], "dtype": "float32"},
            "drone": checkpoint["drone"]["name"],
        }
        with torch.inference_mode():
            report["output"] = {"name": "heatmaps", "shape": ["batch", *predictor(example[:1]).shape[1:]]}
        if verify:
            report["verification"] = verify_export(
                predictor, temporary, export_format, (height, width), seed, str(checkpoint_path)
            )
    return report


def _onnx_bytes(predictor: HeatmapPredictor, example: torch.Tensor, description: str) -> bytes:
    """The ONNX model (dynamic batch, description in metadata_props), checked, as file content."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            program = torch.onnx.export(
                predictor,
                (example,),
                input_names=["images"],
                output_names=["heatmaps"],
                dynamic_shapes={"images": {0: batch}},
                dynamo=True,
            )
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, description
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _torchscript_bytes(predictor: HeatmapPredictor, example: torch.Tensor, description: str) -> bytes:
    """The traced TorchScript archive (description as extra file) as file content, serialised in
    memory: written by Python, a full disk is an OSError rather than an abort inside libtorch."""
    with warnings.catch_warnings():
        # The trace fixes the (static) input size's output shapes: intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(predictor, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": description})
    return buffer.getvalue()


def verify_export(
    predictor: HeatmapPredictor,
    path: Path,
    export_format: ExportFormat,
    size: tuple[int, int],
    seed: int,
    where: str = "checkpoint",
) -> dict[str, Any]:
    """Largest absolute heatmap difference exported vs PyTorch at batch 1 and 3 (random images).

    Raises CheckpointError (naming `where`) when PyTorch or the exported model gives a non-finite
    heatmap (NaN or infinite weights) and ExportVerificationError when the difference exceeds
    VERIFY_TOLERANCE times the heatmap peak (at least 1).
    """
    height, width = size
    generator = torch.Generator().manual_seed(seed + 1)
    run = _onnx_runner(path) if export_format == "onnx" else _torchscript_runner(path)
    differences, peak = {}, 0.0
    for batch in (1, 3):
        images = torch.rand(batch, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = predictor(images).numpy()
        actual = run(images.numpy())
        if actual.shape != expected.shape:
            raise ExportVerificationError(
                f"{where}: exported model gives shape {actual.shape}, PyTorch {expected.shape}"
            )
        if not (np.isfinite(expected).all() and np.isfinite(actual).all()):
            raise CheckpointError(
                f"{where}: gives non-finite heatmaps (NaN or infinite weights); nothing exported, "
                "export a checkpoint of a healthy training run"
            )
        differences[f"batch_{batch}"] = float(np.abs(actual - expected).max())
        peak = max(peak, float(np.abs(expected).max()))
    worst = max(differences.values())
    if worst > VERIFY_TOLERANCE * max(peak, 1.0):
        raise ExportVerificationError(
            f"{where}: the {export_format} export differs from PyTorch by {worst:.3g} (heatmap peak "
            f"{peak:.3g}); nothing exported, report this with the checkpoint"
        )
    return {"max_abs_difference": differences, "heatmap_peak": peak}


def _onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(["heatmaps"], {"images": images})[0]


def _load_torchscript(path: Path, extra_files: dict[str, str] | None = None) -> torch.jit.ScriptModule:
    """torch.jit.load without its deprecation warning (TorchScript is still the format users ask for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})


def _torchscript_runner(path: Path):
    module = _load_torchscript(path)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return run


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint description stored in an exported ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        values = {entry.key: entry.value for entry in model.metadata_props}
        return json.loads(values[METADATA_KEY])
    extra = {f"{METADATA_KEY}.json": ""}
    _load_torchscript(path, extra)
    return json.loads(extra[f"{METADATA_KEY}.json"])
