"""Applying metadata instructions to an image's ``config`` object, as ``docker import -c`` and
``docker commit -c`` do (moby's ``BuildFromConfig`` running the classic builder's dispatchers).

The ``config`` dict is the ``config`` object of an OCI/Docker image config (``Env``, ``Cmd``,
``Entrypoint``, ``ExposedPorts``, ``Volumes``, ``Labels``, ``WorkingDir``, ``User``,
``StopSignal``, ``OnBuild``, ``Healthcheck``, ``Shell``). It is changed in place. Where
Docker's value becomes nil or empty (``CMD []``, ``ENTRYPOINT []``, the ``Cmd`` an
``ENTRYPOINT`` clears) the key is removed; maps are kept sorted by key, as Go writes them.

Words are expanded with the config's own ``Env`` as it stands before each instruction (so
``ENV A=1`` then ``ENV B=$A`` gives ``B=1``, but ``ENV A=2 B=$A`` in one instruction sees the
old ``A``), for ENV, LABEL, EXPOSE, VOLUME, USER, WORKDIR and STOPSIGNAL; never for CMD,
ENTRYPOINT, HEALTHCHECK or ONBUILD.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from shale.dockerfile._go import atoi, clean_path
from shale.dockerfile.health import healthcheck_config
from shale.dockerfile.parser import Instruction, parse_changes
from shale.dockerfile.shell import Lexer
from shale.errors import DockerfileError

__all__ = [
    "DEFAULT_SHELL",
    "apply_changes",
    "apply_config_change",
    "apply_config_changes",
    "parse_port_specs",
    "parse_signal",
]

DEFAULT_SHELL = ["/bin/sh", "-c"]

# Linux signal numbers of moby's SignalMap, in order from SIGHUP (1) to SIGSYS (31).
_SIGNAL_ORDER = (
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV",
    "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN",
    "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
)  # fmt: skip
_SIGNALS = {name: number for number, name in enumerate(_SIGNAL_ORDER, start=1)}
_SIGNALS |= {"IOT": 6, "CLD": 17, "POLL": 29, "RTMIN": 34, "RTMAX": 64}
_SIGNALS |= {f"RTMIN+{i}": 34 + i for i in range(1, 16)}
_SIGNALS |= {f"RTMAX-{i}": 64 - i for i in range(1, 15)}


def parse_signal(raw: str) -> int:
    """moby's ``signal.ParseSignal``: a number (not 0) or a name with or without ``SIG``."""
    try:
        number = atoi(raw)
    except ValueError:
        name = raw.upper().removeprefix("SIG")
        if name not in _SIGNALS:
            raise DockerfileError(f"Invalid signal: {raw}") from None
        return _SIGNALS[name]
    if number == 0:
        raise DockerfileError(f"Invalid signal: {raw}")
    return number


# -- EXPOSE: go-connections nat.ParsePortSpecs ------------------------------------------------


def _port_range(text: str) -> tuple[int, int]:
    if text == "":
        raise ValueError("empty")
    first, dash, last = text.partition("-")
    start = _port_number(first)
    end = _port_number(last.split("-")[0]) if dash else start
    if end < start:
        raise ValueError("range")
    return start, end


def _port_number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise ValueError(text)
    return int(text)


def _split_port_parts(raw: str) -> tuple[str, str, str]:
    parts = raw.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _split_proto(raw: str) -> tuple[str, str]:
    parts = raw.split("/")
    if raw == "" or parts[0] == "":
        return "", ""
    if len(parts) == 1:
        return "tcp", raw
    return parts[1] or "tcp", parts[0]


def _check_ip(raw_ip: str) -> None:
    ip = raw_ip[1:-1] if raw_ip.startswith("[") and raw_ip.endswith("]") else raw_ip
    if ip == "":
        return
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise DockerfileError(f"Invalid ip address: {ip}") from None


def _port_spec(raw: str) -> list[str]:
    raw_ip, host_port, container = _split_port_parts(raw)
    proto, container = _split_proto(container)
    _check_ip(raw_ip)
    if container == "":
        raise DockerfileError(f"No port specified: {raw}<empty>")
    try:
        start, end = _port_range(container)
    except ValueError:
        raise DockerfileError(f"Invalid containerPort: {container}") from None
    if host_port:
        try:
            host_start, host_end = _port_range(host_port)
        except ValueError:
            raise DockerfileError(f"Invalid hostPort: {host_port}") from None
        if end - start != host_end - host_start and end != start:
            raise DockerfileError(
                "Invalid ranges specified for container and host Ports: "
                f"{container} and {host_port}"
            )
    if proto.lower() not in ("tcp", "udp", "sctp"):
        raise DockerfileError(f"Invalid proto: {proto}")
    return [f"{port}/{proto.lower()}" for port in range(start, end + 1)]


def parse_port_specs(specs: Sequence[str]) -> list[str]:
    """EXPOSE values to sorted ``ExposedPorts`` keys (``80`` -> ``80/tcp``, ranges expanded,
    protocol lower-cased; an ``ip:host:`` prefix is accepted and dropped)."""
    ports: set[str] = set()
    for spec in specs:
        ports.update(_port_spec(spec))
    return sorted(ports)


# -- the dispatchers ---------------------------------------------------------------------------


def _env_list(config: dict[str, Any]) -> list[str]:
    return list(config.get("Env") or [])


def _set_env(config: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    env = _env_list(config)
    for key, value in pairs:
        entry = f"{key}={value}"
        for i, existing in enumerate(env):
            if existing.partition("=")[0] == key:
                env[i] = entry
                break
        else:
            env.append(entry)
    config["Env"] = env


def _merge_map(config: dict[str, Any], key: str, values: dict[str, Any]) -> None:
    merged = dict(config.get(key) or {})
    merged.update(values)
    config[key] = dict(sorted(merged.items()))


def _command(config: dict[str, Any], instr: Instruction) -> list[str]:
    if not instr.args:
        return []
    if instr.json:
        return list(instr.args)
    return [*(config.get("Shell") or DEFAULT_SHELL), " ".join(instr.args)]


def _set_or_drop(config: dict[str, Any], key: str, value: list[str]) -> None:
    if value:
        config[key] = value
    else:
        config.pop(key, None)


def _workdir(current: str, requested: str) -> str:
    if requested == "":
        raise DockerfileError("cannot normalize nothing")
    if requested.startswith("/"):
        return clean_path(requested)
    return clean_path("/" + (current or "") + "/" + requested)


def apply_config_change(
    config: dict[str, Any], instr: Instruction, *, escape: str = "\\", cmd_set: bool = False
) -> None:
    """Apply one change instruction to ``config`` in place, as Docker does.

    ``cmd_set`` says whether a CMD was applied earlier in the same batch: an ENTRYPOINT
    clears the inherited ``Cmd`` unless one was (``apply_config_changes`` tracks this).
    Raises DockerfileError with Docker's message for bad values.
    """
    lex = Lexer(escape)
    env = _env_list(config)

    def word(text: str) -> str:
        return lex.process_word(text, env)

    cmd = instr.cmd
    if cmd == "env":
        _set_env(config, [(word(k), word(v)) for k, v in instr.pairs()])
    elif cmd == "label":
        _merge_map(config, "Labels", {word(k): word(v) for k, v in instr.pairs()})
    elif cmd in ("cmd", "entrypoint"):
        _set_or_drop(config, cmd.capitalize(), _command(config, instr))
        if cmd == "entrypoint" and not cmd_set:
            config.pop("Cmd", None)
    elif cmd == "expose":
        specs = [w for arg in instr.args for w in lex.process_words(arg, env)]
        _merge_map(config, "ExposedPorts", {p: {} for p in parse_port_specs(specs)})
    elif cmd == "volume":
        volumes = [word(v) for v in instr.args]
        if "" in volumes:
            raise DockerfileError("VOLUME specified can not be an empty string")
        _merge_map(config, "Volumes", {v: {} for v in volumes})
    else:
        _apply_scalar(config, instr, word)


def _apply_scalar(config: dict[str, Any], instr: Instruction, word: Callable[[str], str]) -> None:
    cmd = instr.cmd
    if cmd == "user":
        config["User"] = word(instr.args[0])
    elif cmd == "workdir":
        config["WorkingDir"] = _workdir(config.get("WorkingDir") or "", word(instr.args[0]))
    elif cmd == "stopsignal":
        signal = word(instr.args[0])
        parse_signal(signal)
        config["StopSignal"] = signal
    elif cmd == "onbuild":
        config["OnBuild"] = [*(config.get("OnBuild") or []), instr.args[0]]
    elif cmd == "healthcheck":
        try:
            config["Healthcheck"] = healthcheck_config(instr.args, instr.json, instr.flags)
        except ValueError as exc:
            raise DockerfileError(str(exc)) from None
    elif cmd == "shell":
        config["Shell"] = list(instr.args)
    else:
        raise DockerfileError(f"{cmd} is not a valid change command")


def apply_config_changes(
    config: dict[str, Any], instrs: Sequence[Instruction], *, escape: str = "\\"
) -> None:
    """Apply several change instructions in order (tracking whether CMD was set)."""
    cmd_set = False
    for instr in instrs:
        apply_config_change(config, instr, escape=escape, cmd_set=cmd_set)
        cmd_set = cmd_set or instr.cmd == "cmd"


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> None:
    """``docker import/commit -c`` in one call: parse the changes as Docker does (joined with
    newlines), check them, then apply them. Nothing is changed if any of them is invalid."""
    instrs = parse_changes(changes)
    trial = dict(config)  # every change replaces values, so a shallow copy isolates them
    apply_config_changes(trial, instrs)
    config.clear()
    config.update(trial)
