"""The same verbs by calling ``runc`` (1.1): ``runc --root <state> --log <file> VERB ...``.

``create`` runs ``runc create --bundle B --pid-file F [--console-socket S] CID`` with the
process's stdio as runc's own (runc hands its fds 0-2 to the container's init when there is
no terminal). runc double-forks too, so the caller must be a child subreaper to reap the
init. runc reports an error on its stderr (which is then the container's stderr: a runc
limitation) and in the JSON log, from which we take the message; ``exec: "X": ...`` errors
become CommandNotFound / CannotExecute as docker maps them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from shale.errors import (
    AlreadyExists,
    CannotExecute,
    CommandNotFound,
    Conflict,
    InvalidArgument,
    NotFound,
    RuntimeFailure,
)
from shale.runtime import ProcessIO, State, require_subreaper

_CID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_EXEC_ERR = re.compile(r'exec: "[^"]*": .*')


def _classify(message: str) -> NoReturn:
    """docker's translation of runtime start errors into 127 / 126 / 125."""
    m = _EXEC_ERR.search(message)
    if m:
        text = m.group(0).removesuffix(": unknown").strip()
        if "executable file not found" in text or "no such file or directory" in text:
            raise CommandNotFound(text)
        if "permission denied" in text or "exec format error" in text:
            raise CannotExecute(text)
    if "does not exist" in message or "not exist" in message:
        raise NotFound(message)
    if "already exists" in message:
        raise AlreadyExists(message)
    if any(w in message for w in ("not running", "not stopped", "cannot start", "cannot exec")):
        raise Conflict(message)
    raise RuntimeFailure(message)


class RuncRuntime:
    name = "runc"

    def __init__(self, root: Path, binary: str = "runc") -> None:
        self.root = root
        found = shutil.which(binary)
        if found is None:
            raise RuntimeFailure(f"{binary} not found in PATH")
        self.binary = found

    def _run(self, *args: str, io: ProcessIO | None = None,
             stdout: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".log-") as log:
            cmd = [self.binary, "--root", str(self.root), "--log", log.name,
                   "--log-format", "json", *args]
            stdin = stderr = subprocess.DEVNULL
            if io is not None and not io.terminal:
                stdin = io.stdin if io.stdin is not None else subprocess.DEVNULL
                stdout = io.stdout if io.stdout is not None else subprocess.DEVNULL
                stderr = io.stderr if io.stderr is not None else subprocess.DEVNULL
            done = subprocess.run(cmd, stdin=stdin, stdout=stdout, stderr=stderr, check=False)
            if done.returncode != 0:
                _classify(_last_error(Path(log.name).read_bytes()) or
                          f"runc {args[0]} failed with status {done.returncode}")
            return done

    def _check_id(self, cid: str) -> None:
        if not _CID.match(cid):
            raise InvalidArgument(f"invalid container id {cid!r}")

    def create(self, cid: str, bundle: Path, io: ProcessIO) -> int:
        require_subreaper()
        self._check_id(cid)
        with tempfile.TemporaryDirectory(dir=_mkdir(self.root), prefix=".pid-") as tmp:
            pidfile = Path(tmp, "pid")
            args = ["create", "--bundle", str(bundle), "--pid-file", str(pidfile)]
            if io.console_socket is not None:
                args += ["--console-socket", io.console_socket]
            self._run(*args, cid, io=io)
            return int(pidfile.read_text())

    def start(self, cid: str) -> None:
        self._check_id(cid)
        self._run("start", cid)

    def state(self, cid: str) -> State:
        self._check_id(cid)
        done = self._run("state", cid, stdout=subprocess.PIPE)
        data: dict[str, Any] = json.loads(done.stdout)
        status = data.get("status", "stopped")
        return State(status, int(data.get("pid", 0)) if status != "stopped" else 0,
                     data.get("bundle", ""))

    def kill(self, cid: str, sig: int, all: bool = False) -> None:
        self._check_id(cid)
        self._run("kill", *(["--all"] if all else []), cid, str(int(sig)))

    def delete(self, cid: str, force: bool = False) -> None:
        self._check_id(cid)
        self._run("delete", *(["--force"] if force else []), cid)

    def exec(self, cid: str, process: dict[str, Any], io: ProcessIO) -> int:
        require_subreaper()
        self._check_id(cid)
        with tempfile.TemporaryDirectory(dir=_mkdir(self.root), prefix=".exec-") as tmp:
            spec, pidfile = Path(tmp, "process.json"), Path(tmp, "pid")
            spec.write_text(json.dumps(process))
            args = ["exec", "--detach", "--process", str(spec), "--pid-file", str(pidfile)]
            if io.console_socket is not None:
                args += ["--console-socket", io.console_socket]
            self._run(*args, cid, io=io)
            return int(pidfile.read_text())


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _last_error(log: bytes) -> str:
    """The last error-level message of runc's JSON log."""
    message = ""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal") and entry.get("msg"):
            message = str(entry["msg"])
    return message
