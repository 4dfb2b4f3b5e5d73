"""Interrupted `drone-pose synth` runs: resumed when asked again with the same settings, explained
to every reader otherwise.

Before the first shard, synth writes DIR/synth_settings.json: everything that decides the samples
(drone, camera, seed, count, split fractions, shard size, scene and pose settings, encoding). A
folder with that file and no dataset.json is an unfinished dataset. Shards are whole or absent
(written under a temporary name, then renamed), so a resumed run keeps every complete shard of the
planned set, removes anything else and renders the rest: sample i depends only on (seed, i), so the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from drone_pose.data.poses import PoseSamplingConfig
from drone_pose.data.rig_poses import RigConfig
from drone_pose.data.shards import INDEX_FILE, DatasetFormatError, read_shard
from drone_pose.data.synth import SceneConfig
from drone_pose.errors import UserError
from drone_pose.geometry.camera import PinholeCamera

log = logging.getLogger(__name__)

SETTINGS_FILE = "synth_settings.json"
SETTINGS_FORMAT = "drone_pose.synthetic_settings"


class SynthFolderError(UserError):
    """An output folder synth cannot render into (a finished dataset, other settings, foreign files)."""


def synth_settings(
    drone: str,
    count: int,
    seed: int,
    fractions: tuple[float, float, float],
    shard_size: int,
    width: int,
    height: int,
    K: np.ndarray,
    scene: SceneConfig,
    poses: PoseSamplingConfig,
    lossless: bool,
    rig: RigConfig | None = None,
) -> dict[str, Any]:
    """The settings that decide a dataset's samples and shards, as plain JSON values."""
    settings = {
        "format": SETTINGS_FORMAT,
        "drone": drone,
        "count": count,
        "seed": seed,
        "splits": list(fractions),
        "shard_size": shard_size,
        "camera": {"width": width, "height": height, "K": np.asarray(K).tolist()},
        "scene": asdict(scene),
        "poses": asdict(poses),
        "image_encoding": "png" if lossless else "jpeg95",
    }
    if rig is not None:
        settings["rig"] = asdict(rig)
    return json.loads(json.dumps(settings))  # tuples as lists: compares equal to a read-back copy


def read_settings(root: Path) -> dict[str, Any] | None:
    """The synth settings of a folder, None when it has none (or they cannot be read)."""
    try:
        settings = json.loads((root / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) and settings.get("format") == SETTINGS_FORMAT else None


def open_output(out: Path, settings: dict[str, Any], shards: dict[str, range]) -> list[str]:
    """Make `out` ready for rendering `shards` (file name -> its sample indices); returns the names
    of the shards already complete there.

    A new or empty folder is created and given the settings file. A folder of an interrupted synth
    with the same settings is resumed: its complete shards are kept, anything else is removed.
    SynthFolderError, with nothing changed, for a finished dataset, an interrupted one with other
    settings, or a folder holding other files.
    """
    if out.exists() and not out.is_dir():
        raise SynthFolderError(f"{out} exists and is not a directory")
    if (out / INDEX_FILE).exists():
        raise SynthFolderError(
            f"{out} already holds a finished dataset ({INDEX_FILE}): choose another --out, or delete it"
        )
    saved = read_settings(out)
    if saved is None:
        if out.exists() and any(out.iterdir()):
            if any(out.glob("*.npz")):
                raise SynthFolderError(
                    f"{out} holds shards but no {INDEX_FILE} and no {SETTINGS_FILE}: an interrupted synth "
                    "of an older drone_pose that cannot be resumed; delete the folder and render it again"
                )
            raise SynthFolderError(f"{out} exists and is not an empty directory")
        out.mkdir(parents=True, exist_ok=True)
        _write_settings(out, settings)
        return []
    changed = sorted(key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key))
    if changed:
        raise SynthFolderError(
            f"{out} holds an interrupted synth with other settings (differing: {', '.join(changed)}); "
            f"finish it with its own: {finish_command(saved, out)}; or choose another --out"
        )
    complete = []
    for path in sorted(out.iterdir()):
        if path.name == SETTINGS_FILE or not path.is_file():
            continue
        if path.name in shards and _complete(path, shards[path.name]):
            complete.append(path.name)
        else:
            log.info("%s: removing %s (not a complete shard of this dataset)", out, path.name)
            path.unlink()
    if complete:
        log.info(
            "%s: resuming an interrupted synth, %d of %d shards already complete",
            out,
            len(complete),
            len(shards),
        )
    return complete


def _write_settings(out: Path, settings: dict[str, Any]) -> None:
    partial = out / f"{SETTINGS_FILE}.partial"
    partial.write_text(json.dumps(settings, indent=2))
    partial.replace(out / SETTINGS_FILE)


def _complete(path: Path, indices: range) -> bool:
    """Whether `path` is a readable shard of exactly the samples `indices`."""
    try:
        shard = read_shard(path)
    except DatasetFormatError:
        return False
    return np.array_equal(shard.index, np.arange(indices.start, indices.stop))


def finish_command(settings: dict[str, Any], out: Path) -> str:
    """The `drone-pose synth` command that renders (or finishes) a dataset with `settings` in `out`;
    for settings the command line cannot express, a description of them instead."""
    scene, poses = settings.get("scene", {}), settings.get("poses", {})
    custom_scene = {k: v for k, v in scene.items() if k != "background_folder"}
    custom_poses = {k: v for k, v in poses.items() if k != "keep_inside"}
    default_scene = {k: v for k, v in asdict(SceneConfig()).items() if k != "background_folder"}
    default_poses = {k: v for k, v in asdict(PoseSamplingConfig()).items() if k != "keep_inside"}
    camera = settings["camera"]
    default_K = PinholeCamera.uava().resized(camera["width"], camera["height"]).K().double().tolist()
    if (
        json.loads(json.dumps(default_scene)) != custom_scene
        or json.loads(json.dumps(default_poses)) != custom_poses
        or not np.allclose(camera["K"], default_K)
    ):
        return f"generate_dataset(...) with out={str(out)!r} and the settings in {out / SETTINGS_FILE}"
    parts = ["drone-pose", "synth", "--drone", str(settings["drone"]), "--count", str(settings["count"])]
    parts += ["--seed", str(settings["seed"]), "--shard-size", str(settings["shard_size"])]
    parts += ["--splits", *(f"{f:g}" for f in settings["splits"])]
    parts += ["--width", str(camera["width"]), "--height", str(camera["height"])]
    if scene.get("background_folder"):
        parts += ["--backgrounds", str(scene["background_folder"])]
    if not poses.get("keep_inside", True):
        parts.append("--allow-outside")
    if settings.get("image_encoding") == "png":
        parts.append("--lossless")
    if settings.get("rig"):
        rig = settings["rig"]
        parts += [
            "--cameras",
            str(rig["cameras"]),
            "--rig",
            str(rig["layout"]),
            "--rig-jitter",
            f"{rig['jitter']:g}",
        ]
        if rig["layout"] == "stereo":
            parts += ["--baseline", f"{rig['baseline_m']:g}"]
    return " ".join([*parts, "--out", str(out)])


def explain_unfinished(root: Path) -> str | None:
    """Why a folder without dataset.json is not a dataset and how to finish it; None when it
    shows no sign of synth."""
    settings = read_settings(root)
    if settings is not None:
        shards = len(list(root.glob("*.npz")))
        return (
            f"{root}: no {INDEX_FILE}: a drone-pose synth into this folder was interrupted ({shards} "
            f"shards written); run it again to finish it: {finish_command(settings, root)}"
        )
    if any(root.glob("*.npz")):
        return (
            f"{root}: shards but no {INDEX_FILE}: an interrupted synth of an older drone_pose that cannot "
            "be resumed; delete the folder and render it again with drone-pose synth"
        )
    return None
