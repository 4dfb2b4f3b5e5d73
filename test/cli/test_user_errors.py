"""Every `drone-pose` user error is one line on stderr naming the offending thing, exit code 2, no
traceback; `--debug` shows the traceback instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drone_pose.cli import main
from drone_pose.data.generate import generate_dataset

from ..tiny_models import tiny_checkpoint


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_errors")
    tiny_checkpoint(root / "tiny.pt", input_size=(64, 48))
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (root / "emptydir").mkdir()
    (root / "bad.yaml").write_text("epochs: [unclosed\n")
    generate_dataset("m2ed", 4, root / "data", seed=1, workers=1, width=64, height=48, progress=False)
    return root


# (arguments, a text the one line must contain); paths are relative to the fixture's folder
CASES = [
    ("eval --checkpoint missing.pt --data data", "missing.pt"),
    ("eval --checkpoint corrupt.pt --data data", "corrupt.pt"),
    ("eval --checkpoint tiny.pt --data emptydir", "emptydir"),
    ("eval --checkpoint tiny.pt --data data --split dev", "'dev'"),
    ("eval --checkpoint tiny.pt --data data --batch-size 0", "--batch-size"),
    ("eval --checkpoint tiny.pt --data data --device banana", "banana"),
    ("eval --checkpoint tiny.pt --data data --out /dev/null", "/dev/null"),
    ("eval --checkpoint tiny.pt --data data --uava-drone nope", "'nope'"),
    ("eval-bag missing --out x1", "missing"),
    ("eval-bag corrupt.pt --out x2", "corrupt.pt"),
    ("calibrate-covariance --checkpoint tiny.pt --data data --split train --out /dev/null", "/dev/null"),
    ("keypoint-budget --data data --split nope", "'nope'"),
    ("export --checkpoint corrupt.pt", "corrupt.pt"),
    ("export --checkpoint tiny.pt --out /dev/null", "/dev/null"),
    ("synth --out data --count 4 --workers 1", "data"),
    ("synth --out s3 --count 4 --drone nope --workers 1", "'nope'"),
    ("synth --out s5 --count 4 --splits 0.5 0.5 0.5 --workers 1", "split"),
    ("synth-bag --out b1 --seconds 0 --workers 1", "--seconds"),
    ("train --config missing.yaml", "missing.yaml"),
    ("train --config bad.yaml", "bad.yaml"),
    ("train nokey=3", "nokey"),
    ("train data.path=emptydir output=tr1", "emptydir"),
    ("bench net --architectures resnet50", "resnet50"),
    ("replay missing", "missing"),
    ("demo --drone nope", "'nope'"),
]


@pytest.mark.parametrize(("arguments", "named"), CASES, ids=[case[0] for case in CASES])
def test_a_user_error_is_one_line_with_exit_2(inputs, arguments, named, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    monkeypatch.delenv("DRONE_POSE_DEBUG", raising=False)
    try:
        status = main(arguments.split())
    except SystemExit as exit_:  # argparse's own errors exit through SystemExit
        status = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, err
    assert named in lines[0], lines[0]
    assert "Traceback" not in err


def test_a_process_exits_2_without_a_traceback_and_debug_shows_it(inputs):
    command = [sys.executable, "-m", "drone_pose.cli", "eval", "--checkpoint", "missing.pt", "--data", "data"]
    plain = subprocess.run(command, cwd=inputs, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.strip().count("\n") == 0, plain.stderr
    assert plain.stderr.startswith("drone-pose eval: error: ")
    debug = subprocess.run(
        [*command[:3], "--debug", *command[3:]], cwd=inputs, capture_output=True, text=True, timeout=120
    )
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
