"""``created_by`` texts exactly as docker's classic builder (moby 20.10) writes them.

Metadata steps use the two-argument probe ``SHELL + ["#(nop) ", "<TEXT>"]``, which history
shows as ``/bin/sh -c #(nop)  TEXT`` (two spaces); WORKDIR, COPY and ADD use the one-argument
form ``SHELL + ["#(nop) WORKDIR /app"]`` (one space); RUN is the command itself, prefixed by
``|N K=V ...`` when the stage has build args. TEXT formats follow moby's ``fmt`` verbs
(``CMD %q``, ``VOLUME %v``, ``HEALTHCHECK %q``...), so Go's quoting is reproduced here.
"""

from __future__ import annotations

from typing import Any

from shale.dockerfile._go import quote


def nop_probe(shell: list[str], text: str) -> list[str]:
    """The container_config Cmd of a metadata step."""
    return [*shell, "#(nop) ", text]


def nop_probe_one(shell: list[str], text: str) -> list[str]:
    """The container_config Cmd of WORKDIR/COPY/ADD (one argument)."""
    return [*shell, f"#(nop) {text}"]


def go_q_list(items: list[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(quote(i) for i in items) + "]"


def go_v_list(items: list[str]) -> str:
    """Go's ``%v`` of a ``[]string``: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``."""
    if ns == 0:
        return "0s"
    neg, ns = ns < 0, abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return ("-" if neg else "") + _trim(ns / size) + unit
    secs, frac = divmod(ns, 1_000_000_000)
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    s_text = str(s) + (("." + f"{frac:09d}".rstrip("0")) if frac else "")
    out = (f"{h}h{m}m" if h else f"{m}m" if m else "") + s_text + "s"
    return ("-" if neg else "") + out


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text


def go_q_rune(n: int) -> str:
    """Go's ``%q`` of an integer: a quoted character (``'\\x03'``)."""
    ch = chr(n) if 0 <= n <= 0x10FFFF else "\ufffd"
    if ch == "'":
        return "'\\''"
    if ch == "\\":
        return "'\\\\'"
    if ch.isprintable() and n >= 0x20:
        return f"'{ch}'"
    named = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}
    if n in named:
        return f"'{named[n]}'"
    if n < 0x100:
        return f"'\\x{n:02x}'"
    return f"'\\u{n:04x}'" if n < 0x10000 else f"'\\U{n:08x}'"


def healthcheck_text(hc: dict[str, Any]) -> str:
    """moby's ``fmt.Sprintf("HEALTHCHECK %q", health)`` of a 20.10 ``*HealthConfig``."""
    test = go_q_list(list(hc.get("Test") or []))
    parts = [test] + [quote(go_duration(int(hc.get(k) or 0)))
                      for k in ("Interval", "Timeout", "StartPeriod")]
    return "HEALTHCHECK &{" + " ".join(parts) + " " + go_q_rune(int(hc.get("Retries") or 0)) \
        + "}"


def copy_text(cmd: str, summary: str, dest: str, chown: str, chmod: str) -> str:
    """``COPY file:<hash> in /dest `` (trailing space and, for ``--chown``, the missing
    space before the hash, exactly as docker 20.10 writes them)."""
    flags = f"--chown={chown}" if chown else ""
    if chmod:
        flags += f"--chmod={chmod} "
    return f"{cmd.upper()} {flags}{summary} in {dest} "


def run_text(shown: list[str], any_args: bool, argv: list[str]) -> tuple[str, list[str]]:
    """(created_by, probe Cmd) of a RUN: ``|N K=V ... argv`` when the stage has build args
    (``|0`` when only undeclared proxy args were passed, as moby does)."""
    probe = ([f"|{len(shown)}", *sorted(shown)] if any_args else []) + argv
    return " ".join(probe), probe
