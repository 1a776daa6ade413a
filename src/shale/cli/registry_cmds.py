"""Registry verbs: pull, push, login, logout (docker's flags and output; every failure is
one line and exit 1, as the docker CLI gives for these verbs: ``RegistryError`` is 1, and
``cli.main`` maps other engine errors of these verbs to 1)."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING, Any

from shale.errors import InvalidArgument, RegistryError

if TYPE_CHECKING:
    from shale.engine import Engine

def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("pull", help="download an image from a registry")
    p.add_argument("-a", "--all-tags", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--platform", default=None)
    p.add_argument("--disable-content-trust", action="store_true", help=argparse.SUPPRESS)
    _insecure_flag(p)
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.set_defaults(handler=cmd_pull)
    p = sub.add_parser("push", help="upload an image to a registry")
    p.add_argument("-a", "--all-tags", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--disable-content-trust", action="store_true", help=argparse.SUPPRESS)
    _insecure_flag(p)
    p.add_argument("name", metavar="NAME[:TAG]")
    p.set_defaults(handler=cmd_push)
    p = sub.add_parser("login", help="log in to a registry")
    p.add_argument("-u", "--username", default=None)
    p.add_argument("-p", "--password", default=None)
    p.add_argument("--password-stdin", action="store_true")
    _insecure_flag(p)
    p.add_argument("server", nargs="?", default=None, metavar="SERVER")
    p.set_defaults(handler=cmd_login)
    p = sub.add_parser("logout", help="log out from a registry")
    p.add_argument("server", nargs="?", default=None, metavar="SERVER")
    p.set_defaults(handler=cmd_logout)


def _insecure_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="plain HTTP or unverified TLS for this registry (repeatable)")


def _insecure(engine: Engine, ns: argparse.Namespace) -> tuple[str, ...]:
    from shale.registry_http import insecure_from_config

    return (*ns.insecure_registry, *insecure_from_config(engine.root))


class _Lines:
    """Events as docker prints them when stdout is not a terminal: one line per status."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            print(text, flush=True)

    def line(self, text: str) -> None:
        self._print(text)

    def layer(self, lid: str, status: str, total: int = 0) -> None:
        if status not in ("Pushing", "Downloading"):
            self._print(f"{lid}: {status}")

    def advance(self, lid: str, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Bars(_Lines):
    """A rich progress bar per layer, on a terminal."""

    def __init__(self) -> None:
        super().__init__(False)
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self._console = Console()
        self._bar = Progress("{task.description}", BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), console=self._console)
        self._tasks: dict[str, Any] = {}
        self._bar.start()

    def line(self, text: str) -> None:
        self._bar.console.print(text, highlight=False, markup=False)

    def layer(self, lid: str, status: str, total: int = 0) -> None:
        with self._lock:
            task = self._tasks.get(lid)
            if task is None:
                task = self._tasks[lid] = self._bar.add_task(
                    f"{lid}: {status}", total=total or None)
            else:
                self._bar.update(task, description=f"{lid}: {status}")
                if total:
                    self._bar.update(task, total=total, completed=0)
            if status in ("Already exists", "Pull complete", "Pushed",
                          "Layer already exists") or status.startswith("Mounted from"):
                t = self._bar.tasks[[x.id for x in self._bar.tasks].index(task)]
                self._bar.update(task, completed=t.total or 0)

    def advance(self, lid: str, n: int) -> None:
        task = self._tasks.get(lid)
        if task is not None:
            self._bar.advance(task, n)

    def close(self) -> None:
        self._bar.stop()


def _events(quiet: bool) -> _Lines:
    if not quiet and sys.stdout.isatty():
        return _Bars()
    return _Lines(quiet)


def _quick_exit() -> None:
    """At interpreter exit (atexit runs before its last garbage collection), leave every
    object out of that collection: with the registry client and the engine loaded it alone
    takes ~15 ms of a pull's or push's exit here. Nothing relies on it: files are closed and blobs
    committed by then. In a longer-lived process (the tests) it only runs at its end."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def cmd_pull(engine: Engine, ns: argparse.Namespace) -> int:
    try:
        return _pull(engine, ns)
    finally:
        _quick_exit()


def _pull(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.refs import Reference

    ref = Reference.parse(ns.name)
    insecure = _insecure(engine, ns)
    ev = _events(ns.quiet)
    try:
        if ns.all_tags:
            if not ns.quiet:
                print(f"Pulling all tags of {ref.name}...")
            results = engine.pull(ref, ev, all_tags=True, platform=ns.platform,
                                  insecure=insecure)
            shown = ref.repository
            final = ref.name
        else:
            if ref.tag is None and ref.digest is None and not ns.quiet:
                print("Using default tag: latest")
            results = engine.pull(ref, ev, platform=ns.platform, insecure=insecure)
            shown = ref.with_default_tag().familiar
            final = str(ref.with_default_tag())
    finally:
        ev.close()
    if not ns.quiet:
        if all(r.up_to_date for r in results):
            print(f"Status: Image is up to date for {shown}")
        else:
            print(f"Status: Downloaded newer image for {shown}")
    print(final)
    return 0


def cmd_push(engine: Engine, ns: argparse.Namespace) -> int:
    try:
        return _push(engine, ns)
    finally:
        _quick_exit()


def _push(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.refs import Reference

    ref = Reference.parse(ns.name)
    ev = _events(ns.quiet)
    try:
        results = engine.push(ref, ev, all_tags=ns.all_tags, insecure=_insecure(engine, ns))
    finally:
        ev.close()
    if ns.quiet:
        for r in results:
            print(str(r.ref))
    return 0


def _server_domain(server: str | None) -> str:
    """docker's registry address forms -> the domain a reference would name."""
    if not server:
        return "docker.io"
    text = server.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.split("/", 1)[0]
    if not text:
        raise InvalidArgument(f"invalid registry address {server!r}")
    if text in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return "docker.io"
    return text


def cmd_login(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.auth import Credentials, get_credentials, server_key, store_credentials
    from shale.registry import Registry

    domain = _server_domain(ns.server)
    user, password = ns.username, ns.password
    if password is not None and ns.password_stdin:
        raise InvalidArgument("--password and --password-stdin are mutually exclusive")
    if ns.password_stdin:
        if not user:
            raise InvalidArgument("Must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
              file=sys.stderr)
    insecure = _insecure(engine, ns)
    if not user and password is None:
        stored = get_credentials(domain)
        if stored:
            print("Authenticating with existing credentials...")
            try:
                with Registry(domain, stored, insecure=insecure) as reg:
                    reg.login()
                print("Login Succeeded")
                return 0
            except RegistryError as e:
                print(f"Login did not succeed, error: {e}", file=sys.stderr)
    if not user or password is None:
        if not sys.stdin.isatty():
            raise InvalidArgument("Cannot perform an interactive login from a non TTY "
                                  "device")
        import getpass

        if not user:
            user = input(f"Username ({server_key(domain)}): ").strip()
        if password is None:
            password = getpass.getpass("Password: ")
    if not user:
        raise InvalidArgument("Username cannot be empty")
    if not password:
        raise InvalidArgument("Password cannot be empty")
    creds = Credentials(user, password)
    with Registry(domain, creds, insecure=insecure) as reg:
        reg.login()
        if reg.refresh_token:
            creds = Credentials(user, "", reg.refresh_token)
    store_credentials(domain, creds)
    print("Login Succeeded")
    return 0


def cmd_logout(engine: Engine, ns: argparse.Namespace) -> int:
    from shale.auth import erase_credentials, server_key

    domain = _server_domain(ns.server)
    shown = server_key(domain)
    if erase_credentials(domain):
        print(f"Removing login credentials for {shown}")
    else:
        print(f"Not logged in to {shown}")
    return 0
