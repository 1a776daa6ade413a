"""shale's command line: docker-compatible verbs over the ``Engine`` API.

``main(argv) -> int`` is the only place that reads the environment and argv, and it never
raises: a ``ShaleError`` becomes one line on stderr and docker's exit code (a traceback only
with ``--debug``). Verb modules are imported lazily so ``shale run`` pays only for what it
uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from shale.errors import InvalidArgument, ShaleError

if TYPE_CHECKING:
    from shale.engine import Engine

Handler = Callable[["Engine", argparse.Namespace], int]

# verb -> module under shale.cli that defines add_<verb>(subparsers)
VERB_MODULES: dict[str, str] = {
    "images": "image_cmds", "image": "image_cmds", "tag": "image_cmds", "rmi": "image_cmds",
    "inspect": "image_cmds", "history": "image_cmds", "save": "image_cmds",
    "load": "image_cmds", "import": "image_cmds", "system": "image_cmds",
    "run": "run_cmds", "create": "run_cmds", "start": "run_cmds", "attach": "run_cmds",
    "exec": "run_cmds",
    "ps": "container_cmds", "logs": "container_cmds", "stop": "container_cmds",
    "restart": "container_cmds", "kill": "container_cmds", "wait": "container_cmds",
    "rm": "container_cmds", "rename": "container_cmds", "top": "container_cmds",
    "pause": "container_cmds", "unpause": "container_cmds", "diff": "container_cmds",
    "commit": "container_cmds", "export": "container_cmds", "cp": "container_cmds",
    "container": "container_cmds", "volume": "container_cmds",
    "stats": "stats_cmds",
    "network": "network_cmds", "port": "network_cmds",
    "build": "build_cmds",
    "pull": "registry_cmds", "push": "registry_cmds", "login": "registry_cmds",
    "logout": "registry_cmds",
}


class UsageError(InvalidArgument):
    """A bad flag or argument count: exit 125 for every verb, as docker's CLI."""


# verbs that move a process into a cgroup (a container's init, an exec'd process)
_MOVES_CGROUPS = {"run", "start", "exec", "restart"}

# verbs that start a container: its monitor is forked first thing (monitor_spawn.spawn_early)
_STARTS = {"run", "start", "restart"}

# verbs whose engine errors exit 125 (docker run/create); other verbs exit 1 on failure,
# as docker's CLI does for any error the daemon returns
_ENGINE_125 = {"run", "create"}


def exit_code_for(verb: str | None, e: ShaleError) -> int:
    if e.exit_code == 125 and verb not in _ENGINE_125 and not isinstance(e, UsageError):
        return 1
    return e.exit_code


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad flags give exit 125 as docker."""

    _width: int | None = None

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\nSee '{self.prog} --help'.")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args is not None and "docker_bools" in self.__dict__:
            from shale.cli.flags import rewrite

            args = rewrite(self, args)
        return super().parse_known_args(args, namespace)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter for every add_argument, each asking the terminal its
        # size (~2 ms of a `run`): ask once, the answer argparse would get each time
        if _Parser._width is None:
            import shutil

            _Parser._width = shutil.get_terminal_size().columns - 2
        make: Any = self.formatter_class  # HelpFormatter and its subclasses take width
        formatter: argparse.HelpFormatter = make(prog=self.prog, width=_Parser._width)
        return formatter


def build_parser(verb: str | None) -> argparse.ArgumentParser:
    p = _Parser(prog="shale", description="A daemonless, Docker-compatible image engine")
    p.add_argument("--root", default=None, help="data root (env SHALE_ROOT; /var/lib/shale)")
    p.add_argument("--storage-driver", "-s", default=None, choices=["overlay", "vfs"],
                   help="storage driver (default: overlay when the kernel has it, else vfs)")
    p.add_argument("--debug", "-D", action="store_true", help="tracebacks on errors")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    modules = sorted(set(VERB_MODULES.values())) if verb is None else \
        [VERB_MODULES[verb]] if verb in VERB_MODULES else []
    import importlib

    for name in modules:
        mod = importlib.import_module(f"shale.cli.{name}")
        # a module may build its verbs one at a time (PARSERS): only the verb asked for
        one = getattr(mod, "PARSERS", {}).get(verb) if verb is not None else None
        if one is not None:
            one(sub)
        else:
            mod.register(sub)
    return p


def _find_verb(argv: Sequence[str]) -> str | None:
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--root", "--storage-driver", "-s"):
            skip = True
            continue
        if a.startswith("-"):
            continue
        return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list or "-D" in args_list
    engine: Engine | None = None
    verb: str | None = None
    try:
        verb = _find_verb(args_list)
        if verb in _MOVES_CGROUPS:
            from shale.runtime.cgwarm import warm_moves

            warm_moves()  # from the very start: see cgwarm.warm_moves
        if verb in _STARTS:
            from shale.monitor_spawn import spawn_early

            spawn_early()  # it gets ready while this process parses, creates, plans
        parser = build_parser(verb if verb in VERB_MODULES else None)
        if verb is None:
            parser.print_help()
            return 0
        if verb not in VERB_MODULES:
            raise UsageError(f"unknown command: shale {verb}\nSee 'shale --help'")
        ns = parser.parse_args(args_list)
        handler: Handler | None = getattr(ns, "handler", None)
        if handler is None:
            parser.parse_args([*args_list, "--help"])
            return 0
        from shale.engine import DEFAULT_ROOT, Engine

        root = ns.root or os.environ.get("SHALE_ROOT") or DEFAULT_ROOT
        engine = Engine(root, driver=ns.storage_driver)
        return handler(engine, ns)
    except ShaleError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"Error: {e}", file=sys.stderr)
        return exit_code_for(verb, e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except SystemExit as e:  # argparse --help
        return int(e.code or 0) if isinstance(e.code, int) else 0
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if debug:
            import traceback

            traceback.print_exc()
        print(f"Error: {type(e).__name__}: {e}" if not isinstance(e, OSError)
              else f"Error: {e}", file=sys.stderr)
        return 125 if verb in _ENGINE_125 else 1
    finally:
        if engine is not None:
            engine.close()
        if "shale.monitor_spawn" in sys.modules:
            from shale.monitor_spawn import cancel_early

            cancel_early()
        if "shale.runtime.cgwarm" in sys.modules:
            from shale.runtime.cgwarm import stop_warming

            stop_warming()


def entry() -> None:
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise SystemExit(code) from None
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Leave without the interpreter's finalization: tearing down the modules and objects of
    a `run` costs 10-15 ms here, and nothing of shale's needs it (``main`` has closed the
    databases; files are closed by ``with``). What Python would still do at exit is done
    first: the atexit functions (weakref finalizers among them) and the output flush. With
    a non-daemon thread still running, the normal exit (which waits for it) is taken."""
    import atexit
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive()
           for t in threading.enumerate()):
        raise SystemExit(code)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:  # not CPython: the normal way
        raise SystemExit(code)
    run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        raise SystemExit(code) from None
    os._exit(code)
