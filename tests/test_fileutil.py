"""Scratch directories: a killed build's are removed by the next process that makes one of
the same kind, never a live process's, never one with something mounted on it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shale.fileutil import scratch, scratch_dir

DEAD = "999999999"  # above any pid_max: no such process


def test_dead_processes_dirs_go_live_ones_stay(tmp_path: Path) -> None:
    dead = tmp_path / f"shale-x-{DEAD}-abc"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "f").write_text("left by a killed build")
    live = tmp_path / f"shale-x-{os.getppid()}-abc"
    live.mkdir()
    other = tmp_path / f"shale-y-{DEAD}-abc"  # another kind: not ours to sweep
    other.mkdir()
    made = Path(scratch_dir("shale-x-", str(tmp_path)))
    assert not dead.exists() and live.exists() and other.exists()
    assert made.name.startswith(f"shale-x-{os.getpid()}-") and made.is_dir()
    with scratch("shale-x-", str(tmp_path)) as d:
        assert Path(d).is_dir() and made.exists()  # our own live one stays
    assert not Path(d).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_mounted_dir_is_never_swept(tmp_path: Path) -> None:
    dead = tmp_path / f"shale-x-{DEAD}-mnt"
    dead.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(dead)], check=True)
    try:
        (dead / "precious").write_text("still in use")
        scratch_dir("shale-x-", str(tmp_path))
        assert (dead / "precious").read_text() == "still in use"
    finally:
        subprocess.run(["umount", str(dead)], check=True)
