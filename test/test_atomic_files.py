"""Outputs are whole or absent: a write that fails leaves the old file as it was and no temporary."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from drone_pose.atomic_files import atomic_open, write_text
from drone_pose.errors import OutputPathError
from drone_pose.inference.checkpoint import load_checkpoint, save_checkpoint

from .tiny_models import tiny_checkpoint


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "report.json", '{"old": true}')

    def write_half() -> None:
        with atomic_open(target) as handle:
            handle.write('{"new": ')
            raise RuntimeError("mid-way")

    with pytest.raises(RuntimeError, match="mid-way"):
        write_half()
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_devices_and_folders_are_refused_as_outputs(tmp_path):
    for destination in ("/dev/null", tmp_path):
        with pytest.raises(OutputPathError):
            write_text(destination, "x")
    assert list(tmp_path.iterdir()) == []


def _limited_save(source: str, destination: str, limit_bytes: int) -> subprocess.CompletedProcess:
    """save_checkpoint(load(source), destination) in a process whose files may not grow beyond
    limit_bytes (RLIMIT_FSIZE, as a full disk): the write fails part way."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n"
        "from drone_pose.inference.checkpoint import load_checkpoint, save_checkpoint\n"
        f"save_checkpoint(load_checkpoint({source!r}), {destination!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_checkpoint_save_on_a_full_disk_changes_nothing(tmp_path):
    source = tiny_checkpoint(tmp_path / "source.pt")
    target = tmp_path / "model.pt"
    target.write_bytes(b"the previous model")
    size = source.stat().st_size
    assert size > 4096
    result = _limited_save(str(source), str(target), size // 2)
    assert result.returncode != 0
    assert "Traceback" in result.stderr  # an exception, not a crash
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "source.pt"]
    ok = _limited_save(str(source), str(target), resource.RLIM_INFINITY)
    assert ok.returncode == 0, ok.stderr
    assert torch.equal(
        next(iter(load_checkpoint(target)["state_dict"].values())),
        next(iter(load_checkpoint(source)["state_dict"].values())),
    )


def test_an_export_of_nan_weights_fails_and_writes_nothing(tmp_path, capsys):
    from drone_pose.cli import main

    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))
    for value in checkpoint["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    save_checkpoint(checkpoint, tmp_path / "nan.pt")
    out = tmp_path / "nan.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "nan.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt", "tiny.pt"]


def test_a_folder_output_replaces_the_old_one_only_when_complete(tmp_path):
    from drone_pose.atomic_files import atomic_folder

    target = tmp_path / "estimates"
    target.mkdir()
    (target / "estimates.mcap").write_text("old bag")

    def write_half() -> None:
        with atomic_folder(target) as partial:
            partial.mkdir()
            (partial / "estimates.mcap").write_text("half a bag")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_half()
    assert (target / "estimates.mcap").read_text() == "old bag"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["estimates"]
    with atomic_folder(target) as partial:
        partial.mkdir()
        (partial / "estimates.mcap").write_text("new bag")
    assert [p.name for p in target.iterdir()] == ["estimates.mcap"]
    assert (target / "estimates.mcap").read_text() == "new bag"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["estimates"]
