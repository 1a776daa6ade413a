"""What keeps `run --rm` and `exec` fast without changing what they do: the cgroup move
warmer, the import diet of the run path, the cheaper bookkeeping helpers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shale.runtime import cgwarm


def _own_cgroups() -> str:
    with open("/proc/self/cgroup") as f:
        return f.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroup.procs writes)")
def test_move_warmer_changes_no_membership_and_stops() -> None:
    path = cgwarm._own_procs_file()
    assert path is not None and os.path.exists(path), path
    before = _own_cgroups()
    warmer = cgwarm.MoveWarmer().start()
    time.sleep(0.05)
    warmer.stop()
    warmer._thread.join(2.0)
    assert not warmer._thread.is_alive()
    assert _own_cgroups() == before


def test_move_warmer_gives_up_quietly_without_a_cgroup_file(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(cgwarm, "_own_procs_file", lambda: None)
    warmer = cgwarm.MoveWarmer().start()
    warmer._thread.join(2.0)
    assert not warmer._thread.is_alive()
    warmer.stop()  # after the thread ended: still fine


def test_move_warmer_deadline() -> None:
    warmer = cgwarm.MoveWarmer(limit=0.05).start()
    warmer._thread.join(2.0)
    assert not warmer._thread.is_alive()


# ------------------------------------------------------------------------------ record
def test_record_matches_dataclass_semantics() -> None:
    import dataclasses

    from shale.record import FrozenInstanceError, asdict, field, fields, record, replace

    @record
    class Mut:
        a: int
        b: str = "x"
        c: list[int] = field(default_factory=list)

    @dataclasses.dataclass
    class MutDC:
        a: int
        b: str = "x"
        c: list[int] = dataclasses.field(default_factory=list)

    m, d = Mut(1), MutDC(1)
    assert (m.a, m.b, m.c) == (d.a, d.b, d.c) == (1, "x", [])
    assert Mut(1).c is not Mut(1).c  # a fresh default each time
    assert repr(Mut(1, "y", [2])) == "test_record_matches_dataclass_semantics.<locals>.Mut(" \
        "a=1, b='y', c=[2])"
    assert Mut(1, c=[3]) == Mut(a=1, b="x", c=[3]) and Mut(1) != Mut(2)
    assert Mut(1) != MutDC(1)  # only the same class compares equal, as dataclasses
    assert Mut.__hash__ is None and MutDC.__hash__ is None  # mutable: unhashable
    m.a = 5
    assert m.a == 5
    assert fields(Mut) == ("a", "b", "c") and asdict(Mut(1)) == {"a": 1, "b": "x", "c": []}
    assert replace(Mut(1, "q"), a=2) == Mut(2, "q")
    for bad in (lambda: Mut(), lambda: Mut(1, 2, 3, 4), lambda: Mut(1, a=2),
                lambda: Mut(1, z=2), lambda: replace(Mut(1), z=2)):
        with pytest.raises(TypeError):
            bad()

    @record(frozen=True, order=True)
    class Frozen:
        x: int
        y: tuple[str, ...] = ()

        def doubled(self) -> int:
            return self.x * 2

    f = Frozen(2, ("a",))
    assert f.doubled() == 4 and hash(f) == hash(Frozen(2, ("a",)))
    assert {f, Frozen(2, ("a",))} == {f}
    with pytest.raises(FrozenInstanceError):
        f.x = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del f.y  # type: ignore[misc]
    assert Frozen(1) < Frozen(2) <= Frozen(2) and Frozen(3) > Frozen(2, ("z",))
    assert sorted([Frozen(3), Frozen(1), Frozen(2)]) == [Frozen(1), Frozen(2), Frozen(3)]

    @record(frozen=True)
    class OwnHash:
        v: str

        def __hash__(self) -> int:
            return 7

    assert hash(OwnHash("a")) == 7


def test_run_path_imports_no_dataclasses() -> None:
    """The modules `run`, `start`, `rm` and `exec` use make no dataclass at import (each
    one costs ~0.5 ms; `dataclasses` itself 5 ms)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import shale.cli.run_cmds, shale.container_ops, shale.monitor, shale.bundle, "
            "shale.exec_ops, shale.network.endpoint, shale.network.config, "
            "shale.network.store, shale.runtime.builtin, shale.runtime.spec, "
            "shale.snapshots.overlay, shale.volumes, shale.limits\n"
            "print(' '.join(sorted(m for m in sys.modules if m in "
            "('dataclasses', 'inspect', 'fractions', 'decimal', 'hashlib', 'secrets', "
            "'subprocess', 'socket', 'selectors'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [], out


def test_format_time_matches_datetime() -> None:
    import random
    from datetime import UTC, datetime

    from shale.oci import format_time

    def reference(ts: float) -> str:
        dt = datetime.fromtimestamp(ts, tz=UTC)
        frac = f"{dt.microsecond:06d}".rstrip("0")
        base = dt.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{base}.{frac}Z" if frac else f"{base}Z"

    rng = random.Random(5)
    samples = [0.0, 1.0, 1.5, 0.0000005, 0.0000015, 0.9999995, 1700000000.9999996,
               1700000000.123456, 1700000000.1234565, 253402300799.0, time.time()]
    samples += [rng.uniform(0, 4e9) for _ in range(2000)]
    samples += [int(rng.uniform(0, 4e9)) + rng.randrange(0, 10**6) / 1e6 for _ in range(2000)]
    for ts in samples:
        assert format_time(ts) == reference(ts), ts


# ------------------------------------------------------------------------------ exit
def _py(code: str) -> tuple[int, str]:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout


def test_exit_runs_atexit_and_flushes() -> None:
    code = ("import atexit, sys\n"
            "from shale.cli import _exit\n"
            "atexit.register(lambda: print('bye'))\n"
            "sys.stdout.write('hi ')\n"
            "_exit(3)\n")
    assert _py(code) == (3, "hi bye\n")


def test_exit_waits_for_a_non_daemon_thread() -> None:
    code = ("import threading, time\n"
            "from shale.cli import _exit\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), print('late'))).start()\n"
            "_exit(4)\n")
    assert _py(code) == (4, "late\n")


def test_console_entry_exit_codes_and_output(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    base = f"import sys; sys.argv = ['shale', '--root', {root!r}, *%r]; " \
           "from shale.cli import entry; entry()"
    assert _py(base % (["images", "-q"],)) == (0, "")
    code, out = _py(base % (["rmi", "nosuch"],))
    assert code == 1 and out == ""
    code, out = _py(base % (["images"],))
    assert code == 0 and out.startswith("REPOSITORY")
