"""What keeps `run --rm` and `exec` fast without changing what they do: the cgroup move
warmer, the import diet of the run path, the cheaper bookkeeping helpers."""

from __future__ import annotations

import os
import time

import pytest

from shale.runtime import cgroups


def _own_cgroups() -> str:
    with open("/proc/self/cgroup") as f:
        return f.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroup.procs writes)")
def test_move_warmer_changes_no_membership_and_stops() -> None:
    path = cgroups._own_procs_file()
    assert path is not None and os.path.exists(path), path
    before = _own_cgroups()
    warmer = cgroups.MoveWarmer().start()
    time.sleep(0.05)
    warmer.stop()
    warmer._thread.join(2.0)
    assert not warmer._thread.is_alive()
    assert _own_cgroups() == before


def test_move_warmer_gives_up_quietly_without_a_cgroup_file(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(cgroups, "_own_procs_file", lambda: None)
    warmer = cgroups.MoveWarmer().start()
    warmer._thread.join(2.0)
    assert not warmer._thread.is_alive()
    warmer.stop()  # after the thread ended: still fine


def test_move_warmer_deadline() -> None:
    warmer = cgroups.MoveWarmer(limit=0.05).start()
    warmer._thread.join(2.0)
    assert not warmer._thread.is_alive()
