"""run, create, start, attach, exec: the verbs that attach to a container's stdio.

Kept apart from the other container verbs so ``shale run`` imports as little as possible.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument, ShaleError

if TYPE_CHECKING:
    from shale.containers import Container
    from shale.engine import Engine
    from shale.monitor_spawn import Pending


def _bool_flag(p: argparse.ArgumentParser, *names: str, default: bool) -> None:
    from shale.cli.flags import docker_bool

    docker_bool(p, *names, default=default)


def add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("--name", default=None)
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("--env-file", action="append", default=[])
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("-u", "--user", default="")
    p.add_argument("--entrypoint", default=None)
    p.add_argument("-h", "--hostname", default="")
    p.add_argument("-v", "--volume", action="append", default=[])
    p.add_argument("--tmpfs", action="append", default=[])
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--init", action="store_true")
    p.add_argument("--stop-signal", default="")
    p.add_argument("--stop-timeout", type=int, default=None)
    p.add_argument("--restart", default="no")
    p.add_argument("--ulimit", action="append", default=[])
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--cap-add", action="append", default=[])
    p.add_argument("--cap-drop", action="append", default=[])
    p.add_argument("--security-opt", action="append", default=[])
    p.add_argument("--network", "--net", default="default")
    p.add_argument("--network-alias", "--net-alias", action="append", default=[])
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP")
    p.add_argument("-p", "--publish", action="append", default=[])
    p.add_argument("-P", "--publish-all", action="store_true")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("-l", "--label", action="append", default=[])
    p.add_argument("--runtime", default="builtin", choices=["builtin", "runc"])
    p.add_argument("-m", "--memory", default="")
    p.add_argument("--memory-swap", default="")
    p.add_argument("--cpus", default="")
    p.add_argument("-c", "--cpu-shares", default="")
    p.add_argument("--cpuset-cpus", default="")
    p.add_argument("--pids-limit", default="")
    p.add_argument("--rm", action="store_true")
    p.add_argument("--pull", default="missing")
    p.add_argument("--platform", default=None)
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)


def _add_run(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("run", help="create and run a container", add_help=False)
    p.add_argument("--help", action="help")
    p.add_argument("-d", "--detach", action="store_true")
    _bool_flag(p, "--sig-proxy", default=True)
    p.add_argument("-a", "--attach", action="append", default=[])
    add_create_flags(p)
    p.set_defaults(handler=cmd_run)


def _add_create(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("create", help="create a container", add_help=False)
    p.add_argument("--help", action="help")
    add_create_flags(p)
    p.set_defaults(handler=cmd_create)


def _add_start(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("start", help="start stopped containers")
    p.add_argument("-a", "--attach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=cmd_start)


def _add_attach(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("attach", help="attach to a running container")
    p.add_argument("--no-stdin", action="store_true")
    _bool_flag(p, "--sig-proxy", default=True)
    p.add_argument("container")
    p.set_defaults(handler=cmd_attach)


def _add_exec(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("--env-file", action="append", default=[])
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("-u", "--user", default="")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_exec)


# one builder per verb: `shale run` builds only run's parser (see cli.build_parser)
PARSERS: dict[str, Callable[[argparse._SubParsersAction[Any]], None]] = {
    "run": _add_run, "create": _add_create, "start": _add_start, "attach": _add_attach,
    "exec": _add_exec,
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    for add in PARSERS.values():
        add(sub)


def _read_env_files(files: list[str]) -> list[str]:
    out = []
    for f in files:
        try:
            with open(f) as fh:
                text = fh.read()
        except OSError as e:
            raise InvalidArgument(f"open {f}: {e.strerror}") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _bad_flag(ns: argparse.Namespace, flag: str, value: str, why: str) -> ShaleError:
    from shale.cli import UsageError

    return UsageError(f'invalid argument "{value}" for "{flag}" flag: {why}\n'
                      f"See 'shale {getattr(ns, 'verb', None) or 'run'} --help'.")


def ram_in_bytes(text: str) -> int:
    """go-units ``RAMInBytes``: ``64m``, ``1.5g``, ``512k``, ``100`` (bytes), binary units."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?", text)
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    try:
        size = float(m.group(1))
    except ValueError:
        raise ValueError(f'strconv.ParseFloat: parsing "{m.group(1)}": invalid syntax') from None
    power = " kmgtp".index((m.group(2) or " ").lower())
    return int(size * 1024 ** power)


def parse_limits(ns: argparse.Namespace) -> dict[str, Any]:
    """docker's client-side parsing of the limit flags (MemBytes, MemSwapBytes, NanoCPUs,
    int64), with its messages."""
    out: dict[str, Any] = {"cpuset_cpus": ns.cpuset_cpus}
    for key, flag, value in (("memory", "-m, --memory", ns.memory),
                             ("memory_swap", "--memory-swap", ns.memory_swap)):
        if value == "-1" and key == "memory_swap":
            out[key] = -1
        elif value:
            try:
                out[key] = ram_in_bytes(value)
            except ValueError as e:
                raise _bad_flag(ns, flag, value, str(e)) from None
    if ns.cpus:
        from fractions import Fraction

        try:
            nano = Fraction(ns.cpus) * 1_000_000_000
        except (ValueError, ZeroDivisionError):
            raise _bad_flag(ns, "--cpus", ns.cpus,
                            f"failed to parse {ns.cpus} as a rational number") from None
        if nano.denominator != 1:
            raise _bad_flag(ns, "--cpus", ns.cpus, "value is too precise")
        out["nano_cpus"] = int(nano)
    for key, flag, value in (("cpu_shares", "-c, --cpu-shares", ns.cpu_shares),
                             ("pids_limit", "--pids-limit", ns.pids_limit)):
        if value:
            try:
                out[key] = int(value)
            except ValueError:
                raise _bad_flag(ns, flag, value, f'strconv.ParseInt: parsing "{value}": '
                                "invalid syntax") from None
    return out


def _options(ns: argparse.Namespace) -> Any:
    from shale.container_ops import RunOptions

    labels = {}
    for item in ns.label:
        k, _, v = item.partition("=")
        labels[k] = v
    return RunOptions(
        image=ns.image, cmd=ns.command or None, entrypoint=ns.entrypoint,
        env=_read_env_files(ns.env_file) + ns.env, workdir=ns.workdir, user=ns.user,
        hostname=ns.hostname, tty=ns.tty, interactive=ns.interactive, name=ns.name,
        auto_remove=ns.rm, volumes=ns.volume, tmpfs=ns.tmpfs, read_only=ns.read_only,
        init=ns.init, stop_signal=ns.stop_signal, stop_timeout=ns.stop_timeout,
        restart=ns.restart, ulimits=ns.ulimit, privileged=ns.privileged,
        cap_add=ns.cap_add, cap_drop=ns.cap_drop, security_opt=ns.security_opt,
        network=ns.network, publish=ns.publish, publish_all=ns.publish_all,
        expose=ns.expose, network_aliases=ns.network_alias, labels=labels, runtime=ns.runtime,
        extra_hosts=ns.add_host,
        attach_stdio=not getattr(ns, "detach", False), **parse_limits(ns))


def _create(engine: Engine, ns: argparse.Namespace, pending: Pending | None = None
            ) -> Container:
    from shale.container_ops import create

    warnings: list[str] = []
    try:
        c = create(engine, _options(ns), warnings, pending)
    except ShaleError as e:
        e.exit_code = 125  # docker: any engine error of run/create (a name conflict too)
        raise
    for line in warnings:  # docker's client prints the create response's warnings
        print(f"WARNING: {line}", file=sys.stderr)
    return c


def cmd_create(engine: Engine, ns: argparse.Namespace) -> int:
    c = _create(engine, ns)
    print(c.id)
    return 0


def cmd_run(engine: Engine, ns: argparse.Namespace) -> int:
    if ns.tty and ns.interactive and not sys.stdin.isatty():
        raise InvalidArgument("the input device is not a TTY")
    _begin_warming()
    try:
        return _run(engine, ns)
    finally:
        _end_warming()


def _run(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.monitor_spawn import read_status, take

    # the monitor was forked first thing (cli.main): it loads what it needs meanwhile
    pending = take()
    try:
        c = _create(engine, ns, pending)
    except BaseException:
        pending.cancel()
        raise
    if ns.detach:
        with _warm_moves():
            status = _start(engine, c, attached=False, pending=pending)
            _print_warnings(c)
            kind, code, msg = read_status(status)
            os.close(status)
        if kind == "E":
            print(f"Error: {msg}", file=sys.stderr)
            return code
        print(c.id)
        return 0
    return _start_attached(engine, c, stdin=ns.interactive, sig_proxy=ns.sig_proxy,
                           pending=pending)


def _start_attached(engine: Engine, c: Container, stdin: bool, sig_proxy: bool,
                    start_error: int | None = None, pending: Pending | None = None) -> int:
    """Start ``c`` attached; its exit code, or the start error's (``start_error`` instead
    when given: docker's ``start -a`` exits 1 where ``run`` exits 125/126/127)."""
    from shale import attach
    from shale.monitor_spawn import read_status

    sock = None
    with _warm_moves():
        status = _start(engine, c, attached=True, for_run=start_error is None,
                        pending=pending)
        _print_warnings(c)
        try:
            kind, code, msg = read_status(status)
            if kind == "L":
                size = attach.terminal_size() if c.config.get("Tty") else None
                sock = attach.connect(c.attach_socket, stdin=stdin, size=size)
                kind, code, msg = read_status(status)
        finally:
            os.close(status)
    if kind != "S" or sock is None:
        if sock is not None:
            sock.close()
        _auto_remove(engine, c)  # docker's --rm removes a container that failed to start
        print(f"Error: {msg}", file=sys.stderr)
        return code if start_error is None else start_error
    try:
        client = attach.AttachClient(sock, tty=bool(c.config.get("Tty")), stdin=stdin,
                                     sig_proxy=sig_proxy)
        result = client.run()
    finally:
        sock.close()
    _auto_remove(engine, c)
    if result.get("Error"):
        print(f"Error: {result['Error']}", file=sys.stderr)
    return int(result.get("ExitCode", 125))


def _begin_warming() -> None:
    """Keep cgroup moves cheap (``cgwarm.MoveWarmer``) until ``_end_warming``: `main`
    started it already for this verb; early, see ``cgwarm.warm_moves``."""
    from shale.runtime.cgwarm import warm_moves

    warm_moves()


def _end_warming() -> None:
    from shale.runtime.cgwarm import stop_warming

    stop_warming()


@contextlib.contextmanager
def _warm_moves() -> Iterator[None]:
    """Until the monitor reports the container started: its move of the container into
    the cgroup then waits for no RCU grace period."""
    _begin_warming()
    try:
        yield
    finally:
        _end_warming()


def _start(engine: Engine, c: Container, attached: bool, for_run: bool = True,
           pending: Pending | None = None) -> int:
    """``start``; a ``--rm`` container that cannot start is removed, and ``run`` exits 125
    on any engine error there (docker's CLI), as on one of ``create``."""
    from shale.container_ops import start

    try:
        return start(engine, c, attached=attached, pending=pending)
    except ShaleError as e:
        _auto_remove(engine, c)
        if for_run:
            e.exit_code = 125
        raise


def _print_warnings(c: Container) -> None:
    """What the host could not grant (capabilities, limits), as docker's WARNING lines."""
    try:
        text = (c.dir / "warnings").read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        print(f"WARNING: {line}", file=sys.stderr)


def _auto_remove(engine: Engine, c: Container) -> None:
    """An attached ``--rm`` container is removed by the CLI once its monitor is done."""
    if not c.host_config.get("AutoRemove"):
        return
    from shale.container_ops import remove_container, wait_stopped

    wait_stopped(engine, c, 30)
    try:
        remove_container(engine, c, force=True, volumes=True)
    except ShaleError:
        pass


def cmd_start(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.container_ops import start
    from shale.containers import ContainerStore
    from shale.monitor_spawn import read_status

    store = ContainerStore(engine)
    if ns.attach and len(ns.containers) > 1:
        raise InvalidArgument("you cannot start and attach multiple containers at once")
    code = 0
    for name in ns.containers:
        try:
            c = store.get(name)
            if ns.attach:
                return _start_attached(engine, c, stdin=ns.interactive, sig_proxy=True,
                                       start_error=1)
            if store.state(c).Running:
                print(name)
                continue
            with _warm_moves():
                status = start(engine, c, attached=False)
                _print_warnings(c)
                kind, _rc, msg = read_status(status)
                os.close(status)
            if kind == "E":
                raise ShaleError(msg)
            print(name)
        except ShaleError as e:
            print(f"Error: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_attach(engine: Engine, ns: argparse.Namespace) -> int:
    from shale import attach
    from shale.containers import ContainerStore

    store = ContainerStore(engine)
    c = store.get(ns.container)
    if not store.state(c).Running:
        raise InvalidArgument("You cannot attach to a stopped container, start it first")
    stdin = not ns.no_stdin and bool(c.config.get("OpenStdin"))
    sock = attach.connect(c.attach_socket, stdin=stdin)
    result = attach.AttachClient(sock, tty=bool(c.config.get("Tty")), stdin=stdin,
                                 sig_proxy=ns.sig_proxy).run()
    return int(result.get("ExitCode", 0))


def cmd_exec(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.exec_ops import ExecOptions, run_exec

    if not ns.command:
        raise InvalidArgument('"shale exec" requires at least 2 arguments.')
    opts = ExecOptions(cmd=ns.command, env=_read_env_files(ns.env_file) + ns.env,
                       workdir=ns.workdir, user=ns.user, tty=ns.tty,
                       interactive=ns.interactive, detach=ns.detach,
                       privileged=ns.privileged)
    return run_exec(engine, ns.container, opts)
