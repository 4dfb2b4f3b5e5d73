"""`drone-pose reproduce`: the study's experiment grid (Tables 3-7) at a scale that fits the machine.

For every drone: render a dataset (or reuse one), train each distinct experiment once (rows that
are the same run in several tables, e.g. HRNet with l_h, share it), evaluate its best checkpoint
on the test split with `drone-pose eval`, and write a results page with the measured tables next
to the study's, stating the machine and the scale (epochs, images, network) they come from.

With an initial checkpoint per drone, every row whose network it fits (the same network, or that
network with the HigherHRNet module) starts from it, so a CPU-sized grid compares losses and
solvers after a common heatmap training instead of from scratch; the page says each row's start.
A finished row leaves `runs/<name>/reproduce.json`; rerunning the same grid reuses it.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drone_pose.atomic_files import write_text
from drone_pose.data.generate import generate_dataset
from drone_pose.data.shards import INDEX_FILE
from drone_pose.evaluation.split_evaluation import evaluate_checkpoint, open_dataset
from drone_pose.inference.checkpoint import load_checkpoint, plain_network_config
from drone_pose.resources import config_dir
from drone_pose.train.config import load_config
from drone_pose.train.paper_results import COLUMNS, TABLE_7, TABLES, TIMING_COLUMNS
from drone_pose.train.preparation import initial_weights_fit
from drone_pose.train.trainer import train

STUDY_EPOCHS = 44
STUDY_HEATMAP_EPOCHS = 30  # Table 5: l_h for 30 epochs, then l_m for 14
ROW_RESULT_FILE = "reproduce.json"


@dataclass(frozen=True)
class Experiment:
    """One row: table, drone, row label, the base experiment YAML and its network role."""

    table: int
    drone: str
    label: str
    config: str
    role: str = "hrnet"  # hrnet | higher | hourglass


def grid(drones: tuple[str, ...], tables: tuple[int, ...]) -> list[Experiment]:
    """The rows of Tables 3-6 (Table 7 reuses Table 6's runs) for the given drones."""
    rows = []
    for drone in drones:
        rows += [
            Experiment(3, drone, "l_m", "m2ed_hrnet_lm"),
            Experiment(3, drone, "l_p", "m2ed_hrnet_lp"),
            Experiment(3, drone, "l_h", "m2ed_hrnet_lh"),
            Experiment(4, drone, "Hourglass", "m2ed_hrnet_lh", "hourglass"),
            Experiment(4, drone, "HRNet", "m2ed_hrnet_lh"),
            Experiment(4, drone, "HigherHRNet", "m2ed_hrnet_lh", "higher"),
            Experiment(5, drone, "BPnP", "m2ed_two_phase_bpnp"),
            Experiment(5, drone, "EPnP", "m2ed_two_phase_epnp"),
            Experiment(6, drone, "BPnP_faster", "m2ed_hrnet_lp_faster"),
            Experiment(6, drone, "BPnP", "m2ed_hrnet_lp"),
        ]
    wanted = set(tables) | ({6} if 7 in tables else set())
    return [row for row in rows if row.table in wanted]


def network_for(role: str, network: str | dict[str, Any] | None) -> str | dict[str, Any]:
    """The network of a row: the study's (HRNet-W48, its HigherHRNet, Hourglass) or, with a scaled
    network, that network (HRNet rows), with the HigherHRNet module added (HigherHRNet rows), and
    hourglass_lite (Hourglass rows). `drone-pose bench net` at 320x240: hrnet_lite 1.15 GFLOPs,
    hourglass_lite 4.20, the study's hourglass 7.16."""
    if network is None:
        return {"hrnet": "hrnet_w48", "higher": "higher_hrnet_w48", "hourglass": "hourglass"}[role]
    if role == "hourglass":
        return "hourglass_lite"
    if role == "higher":
        return {**plain_network_config(network), "higher": True}
    return network


def reproduce(
    out: str | Path,
    results: str | Path,
    drones: tuple[str, ...] = ("m2ed", "tello"),
    tables: tuple[int, ...] = (3, 4, 5, 6, 7),
    epochs: int = STUDY_EPOCHS,
    images: int = 20000,
    network: str | dict[str, Any] | None = None,
    width: int = 320,
    height: int = 240,
    extra: tuple[str, ...] = (),
    init: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the grid and write the results page; returns the measured rows.

    init: drone -> checkpoint that starts the rows whose network it fits (others start from scratch).
    """
    out = Path(out)
    init = dict(init or {})
    unknown = sorted(set(init) - set(drones))
    if unknown:
        raise ValueError(f"init names drones outside the grid: {', '.join(unknown)}")
    init_networks = {drone: load_checkpoint(path)["network"] for drone, path in init.items()}
    heatmap_epochs = max(1, round(epochs * STUDY_HEATMAP_EPOCHS / STUDY_EPOCHS)) if epochs > 1 else 0
    measured: dict[tuple[int, str, str], dict[str, Any]] = {}
    done: dict[str, dict[str, Any]] = {}
    for row in grid(drones, tables):
        data = _dataset(out / "data" / row.drone, row.drone, images, width, height, progress)
        net = network_for(row.role, network)
        key = json.dumps([row.config, row.drone, net], sort_keys=True, default=str)
        if key not in done:
            name = f"{row.drone}_{row.config.removeprefix('m2ed_')}_{row.role}"
            start = init.get(row.drone)
            if start is not None and not initial_weights_fit(net, init_networks[row.drone]):
                start = None
            overrides = [
                f"name={name}",
                f"output={out / 'runs'}",
                f"data.path={data}",
                f"epochs={epochs}",
                f"network={json.dumps(net)}",
                *extra,
            ]
            if start is not None:
                overrides.append(f"init={start}")
            if "two_phase" in row.config:
                overrides.append(f"loss.heatmap_only_epochs={heatmap_epochs}")
            done[key] = _run_row(row.config, overrides, data, out / "reports" / name, progress)
            done[key]["start"] = "scratch" if start is None else Path(start).name
        measured[(row.table, row.drone, row.label)] = done[key]
    scale = {
        "epochs": epochs,
        "images_per_drone": images,
        "image_size": f"{width}x{height}",
        "network": "the study's" if network is None else network,
        "extra_overrides": list(extra),
        "init": init,
        "test_images": {drone: len(open_dataset(out / "data" / drone, "test")) for drone in drones},
    }
    starts = {
        drone: {
            "checkpoint": Path(path).name,
            "metrics": evaluate_checkpoint(path, out / "data" / drone, "test")["metrics"],
        }
        for drone, path in init.items()
    }
    page = results_page(measured, tables, drones, scale, starts)
    write_text(results, page)
    return {
        "results": str(results),
        "runs": len(done),
        "rows": {f"{t}/{d}/{label}": v["metrics"] for (t, d, label), v in measured.items()},
    }


def _run_row(
    experiment: str, overrides: list[str], data: Path, report: Path, progress: bool
) -> dict[str, Any]:
    """Train and evaluate one run, or reuse its result when the same run finished before."""
    config = load_config(config_dir() / "train" / f"{experiment}.yaml", overrides)
    record = config.run_dir() / ROW_RESULT_FILE
    if record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("overrides") == overrides:
            return previous["result"]
    summary = train(config, resume=True, progress=progress)  # an interrupted row continues
    evaluation = evaluate_checkpoint(config.run_dir() / "best.pt", data, "test", out=report)
    history = summary["history"]
    result = {
        "run": config.name,
        "metrics": evaluation["metrics"],
        "timing": {
            "train_hours": summary["train_s"] / 3600.0,
            "forward_s": float(np.mean([h["forward_ms"] for h in history])) / 1e3,
            "backward_s": float(np.mean([h["backward_ms"] for h in history])) / 1e3,
            "optimiser_step_s": float(np.mean([h["optimiser_step_ms"] for h in history])) / 1e3,
            "test_minutes": evaluation["seconds"] / 60.0,
        },
    }
    write_text(record, json.dumps({"overrides": overrides, "result": result}, indent=2))
    return result


def _dataset(path: Path, drone: str, images: int, width: int, height: int, progress: bool) -> Path:
    if not (path / INDEX_FILE).is_file():
        generate_dataset(drone, images, path, seed=1989, width=width, height=height, progress=progress)
    return path


def _cell(name: str, value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{value:.3f}" if name in ("NPE", "AD") else f"{value:.2f}"


def _source(result: dict[str, Any]) -> str:
    start = result.get("start", "scratch")
    return "measured" if start == "scratch" else f"measured, from {start}"


def results_page(
    measured: dict[tuple[int, str, str], dict[str, Any]],
    tables: tuple[int, ...],
    drones: tuple[str, ...],
    scale: dict[str, Any],
    starts: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Markdown: machine and scale, then each table with measured and study rows side by side.

    starts: drone -> {"checkpoint": file name, "metrics": its test-split metrics} of the checkpoint
    that drone's rows started from.
    """
    runs = {result["run"]: result["timing"] for result in measured.values()}
    hours = sum(t["train_hours"] + t["test_minutes"] / 60.0 for t in runs.values())
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or 'x86_64'})"
    )
    lines = [
        "# Reproduction results",
        "",
        f"Measured with `drone-pose reproduce` on {datetime.date.today().isoformat()}: {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.platform()}.",
        f"Scale: {json.dumps(scale)}; {len(runs)} runs, {hours:.2f} h of training and testing.",
        "The study's figures are on UAVA (real renders of the same drones at 320x240); ours are on the",
        "synthetic UAVA-like data of `drone-pose synth`. AD in radians as in the study; the other",
        "metrics in percent. At a reduced scale the measured figures are far from converged: compare",
        "the ordering of rows, not the absolute values. Rows marked `from <checkpoint>` started from",
        "that checkpoint (a HigherHRNet row: its HRNet part), the others from scratch: compare rows",
        "with the same start only.",
    ]
    if scale.get("test_images"):
        fewest = min(scale["test_images"].values())
        margin = 196.0 * math.sqrt(0.25 / max(fewest, 1))
        lines.append(
            f"With {fewest} test images a percentage's 95 % sampling interval is up to +-{margin:.1f} "
            "points: closer rows are not told apart by this grid."
        )
    lines.append("")
    if starts:
        lines += [
            "## Starting checkpoints, before any training of the grid (same test split)",
            "",
            "| drone | checkpoint | " + " | ".join(COLUMNS) + " |",
            "| --- | --- |" + " --- |" * len(COLUMNS),
        ]
        for drone, start in starts.items():
            cells = [_cell(c, start["metrics"].get(c)) for c in COLUMNS]
            lines.append(f"| {drone} | {start['checkpoint']} | " + " | ".join(cells) + " |")
        lines.append("")
    for number in sorted(t for t in tables if t in TABLES):
        lines += [
            f"## {TABLES[number]['title']}",
            "",
            "| drone | row | source | " + " | ".join(COLUMNS) + " |",
            "| --- | --- | --- |" + " --- |" * len(COLUMNS),
        ]
        for (table, drone, label), result in measured.items():
            if table != number or drone not in drones:
                continue
            study = TABLES[number]["rows"].get((drone, label), {})  # type: ignore[union-attr]
            ours = [_cell(c, result["metrics"].get(c)) for c in COLUMNS]
            theirs = [_cell(c, study.get(c)) for c in COLUMNS]
            source = _source(result)
            lines.append(f"| {drone} | {label} | {source} | " + " | ".join(ours) + " |")
            lines.append(f"| {drone} | {label} | study | " + " | ".join(theirs) + " |")
        lines.append("")
    if 7 in tables:
        lines += [
            "## Table 7: training-time statistics, BPnP_faster vs BPnP (l_p)",
            "",
            "| drone | row | source | " + " | ".join(TIMING_COLUMNS) + " |",
            "| --- | --- | --- |" + " --- |" * len(TIMING_COLUMNS),
        ]
        for (table, drone, label), result in measured.items():
            if table != 6:
                continue
            study = TABLE_7.get((drone, label), {})
            ours = [f"{result['timing'][c]:.4g}" for c in TIMING_COLUMNS]
            theirs = [f"{study[c]:.4g}" if c in study else "" for c in TIMING_COLUMNS]
            lines.append(f"| {drone} | {label} | {_source(result)} | " + " | ".join(ours) + " |")
            lines.append(f"| {drone} | {label} | study | " + " | ".join(theirs) + " |")
        lines.append("")
    return "\n".join(lines)
