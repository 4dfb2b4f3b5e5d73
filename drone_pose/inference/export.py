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

A checkpoint whose network has the silhouette head (drone_pose.nets.mask_head) exports a second
output, "silhouette" [B,h,w]: the silhouette probability in [0, 1] on the heatmaps' grid (for the
flip test it mirrors onto itself). `silhouette=False` (`--no-silhouette`) exports the heatmaps alone.
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

OUTPUT_NAMES = ("heatmaps", "silhouette")

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


class _WithSilhouette(torch.nn.Module):
    """images -> (heatmaps [B,K,h,w], silhouette [B,h,w]): the exported graph of a mask-head network."""

    def __init__(self, predictor: HeatmapPredictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor.forward_with_silhouette(images)


def exported_module(predictor: HeatmapPredictor, silhouette: bool = True) -> torch.nn.Module:
    """What is exported: the predictor (heatmaps), or with a mask-head network and `silhouette` the
    predictor giving (heatmaps, silhouette)."""
    return _WithSilhouette(predictor).eval() if silhouette and predictor.has_silhouette else predictor


def _outputs(module: torch.nn.Module, images: torch.Tensor) -> list[np.ndarray]:
    """The exported module's outputs on images, as a list (heatmaps[, silhouette])."""
    with torch.inference_mode():
        result = module(images)
    return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]


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
    silhouette: bool = True,
) -> dict[str, Any]:
    """Write the deployable model and return a report (path, shapes, size, seconds, verification).

    verify runs the exported file on random images at batch 1 and 3 (ONNX through onnxruntime,
    TorchScript through torch.jit.load) and reports the largest absolute heatmap (and silhouette)
    difference from PyTorch (verify_export). silhouette: export a mask-head network's silhouette
    output (module docstring). The file is written and verified under a temporary name beside
    `output` and takes its name only then (drone_pose.atomic_files): a failed export leaves what was
    there. Raises CheckpointError for a bad checkpoint (non-finite heatmaps included),
    OutputPathError for an output that is not a regular file, ValueError for an unknown format.
    """
    if export_format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    checkpoint = load_checkpoint(checkpoint_path)
    predictor = exported_module(predictor_from_checkpoint(checkpoint, str(checkpoint_path)), silhouette)
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
        shapes = [["batch", *output.shape[1:]] for output in _outputs(predictor, example[:1])]
        report["output"] = {"name": OUTPUT_NAMES[0], "shape": shapes[0]}
        if len(shapes) > 1:
            report["silhouette_output"] = {"name": OUTPUT_NAMES[1], "shape": shapes[1]}
        if verify:
            report["verification"] = verify_export(
                predictor, temporary, export_format, (height, width), seed, str(checkpoint_path)
            )
    return report


def _onnx_bytes(predictor: torch.nn.Module, example: torch.Tensor, description: str) -> bytes:
    """The ONNX model (dynamic batch, description in metadata_props), checked, as file content."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    outputs = len(_outputs(predictor, example[:1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            program = torch.onnx.export(
                predictor,
                (example,),
                input_names=["images"],
                output_names=list(OUTPUT_NAMES[:outputs]),
                dynamic_shapes={"images": {0: batch}},
                dynamo=True,
            )
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, description
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _torchscript_bytes(predictor: torch.nn.Module, example: torch.Tensor, description: str) -> bytes:
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
    predictor: torch.nn.Module,
    path: Path,
    export_format: ExportFormat,
    size: tuple[int, int],
    seed: int,
    where: str = "checkpoint",
) -> dict[str, Any]:
    """Largest absolute heatmap difference exported vs PyTorch at batch 1 and 3 (random images),
    and with a silhouette output its largest difference too (silhouette_max_abs_difference).

    Raises CheckpointError (naming `where`) when PyTorch or the exported model gives a non-finite
    output (NaN or infinite weights) and ExportVerificationError when a difference exceeds
    VERIFY_TOLERANCE times the output's peak (at least 1).
    """
    height, width = size
    generator = torch.Generator().manual_seed(seed + 1)
    run = _onnx_runner(path) if export_format == "onnx" else _torchscript_runner(path)
    differences: list[dict[str, float]] = [{}, {}]
    peaks = [0.0, 0.0]
    for batch in (1, 3):
        images = torch.rand(batch, 3, height, width, generator=generator)
        expected_outputs = _outputs(predictor, images)
        actual_outputs = run(images.numpy())
        if len(actual_outputs) != len(expected_outputs):
            raise ExportVerificationError(
                f"{where}: exported model gives {len(actual_outputs)} outputs, "
                f"PyTorch {len(expected_outputs)}"
            )
        for number, (actual, expected) in enumerate(zip(actual_outputs, expected_outputs, strict=True)):
            if actual.shape != expected.shape:
                raise ExportVerificationError(
                    f"{where}: exported model gives {OUTPUT_NAMES[number]} of shape {actual.shape}, "
                    f"PyTorch {expected.shape}"
                )
            if not (np.isfinite(expected).all() and np.isfinite(actual).all()):
                raise CheckpointError(
                    f"{where}: gives non-finite {OUTPUT_NAMES[number]} (NaN or infinite weights); nothing "
                    "exported, export a checkpoint of a healthy training run"
                )
            differences[number][f"batch_{batch}"] = float(np.abs(actual - expected).max())
            peaks[number] = max(peaks[number], float(np.abs(expected).max()))
    for number, name in enumerate(OUTPUT_NAMES[: len(expected_outputs)]):
        worst = max(differences[number].values())
        if worst > VERIFY_TOLERANCE * max(peaks[number], 1.0):
            raise ExportVerificationError(
                f"{where}: the {export_format} export's {name} differ from PyTorch by {worst:.3g} (peak "
                f"{peaks[number]:.3g}); nothing exported, report this with the checkpoint"
            )
    report: dict[str, Any] = {"max_abs_difference": differences[0], "heatmap_peak": peaks[0]}
    if len(expected_outputs) > 1:
        report["silhouette_max_abs_difference"] = differences[1]
    return report


def _onnx_runner(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return lambda images: session.run(names, {"images": images})


def _load_torchscript(path: Path, extra_files: dict[str, str] | None = None) -> torch.jit.ScriptModule:
    """torch.jit.load without its deprecation warning (TorchScript is still the format users ask for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})


def _torchscript_runner(path: Path):
    module = _load_torchscript(path)

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            result = module(torch.from_numpy(images))
        return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]

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
