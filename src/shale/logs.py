"""Reading docker's json-file logs: ``logs`` with ``--tail``, ``-t``, ``--since``, ``-f``."""

from __future__ import annotations

import json
import os
import sys
import time

from shale.containers import Container, monitor_alive
from shale.errors import InvalidArgument


def _parse_since(text: str | None, now: float) -> float | None:
    if not text:
        return None
    from shale.oci import parse_time

    units = {"s": 1, "m": 60, "h": 3600}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    ts = parse_time(text)
    if not ts:
        raise InvalidArgument(f"invalid value for \"since\": {text}")
    return ts


def _emit(line: bytes, timestamps: bool, since: float | None, until: float | None) -> None:
    from shale.oci import parse_time

    try:
        rec = json.loads(line)
    except ValueError:
        return
    if since is not None or until is not None:
        t = parse_time(rec.get("time"))
        if (since is not None and t < since) or (until is not None and t > until):
            return
    text = rec.get("log", "")
    if timestamps:
        text = f"{rec.get('time', '')} {text}"
    out = sys.stderr if rec.get("stream") == "stderr" else sys.stdout
    out.write(text)
    out.flush()


def follow_logs(c: Container, *, follow: bool, tail: str, timestamps: bool,
                since: str | None, until: str | None) -> int:
    now = time.time()
    t_since, t_until = _parse_since(since, now), _parse_since(until, now)
    try:
        f = open(c.log_path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        if not follow:
            return 0
        f = open(os.devnull, "rb")  # noqa: SIM115
    with f:
        lines = f.read().splitlines(keepends=True)
        partial = b""
        if lines and not lines[-1].endswith(b"\n"):
            partial = lines.pop()
        if tail != "all":
            try:
                n = int(tail)
            except ValueError:
                raise InvalidArgument(f"invalid tail value {tail!r}") from None
            lines = lines[-n:] if n > 0 else []
        for ln in lines:
            _emit(ln, timestamps, t_since, t_until)
        if not follow:
            return 0
        while True:
            chunk = f.read()
            if chunk:
                partial += chunk
                *done, partial = partial.split(b"\n")
                for ln in done:
                    _emit(ln, timestamps, t_since, t_until)
                continue
            if not monitor_alive(c.lock_path):
                return 0
            time.sleep(0.05)
