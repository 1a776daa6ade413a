"""Registry credentials in docker's own file, so docker and shale share logins.

``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``)::

    {"auths": {"127.0.0.1:5000": {"auth": "<base64 user:password>"}},
     "credsStore": "pass",                        # docker-credential-pass for every host
     "credHelpers": {"gcr.io": "gcloud"}}         # a helper for one host

Lookup order is docker's: ``credHelpers[host]``, then ``credsStore``, then ``auths``. A
helper is the executable ``docker-credential-<name>`` with the verbs ``get``/``store``/
``erase`` (the server on stdin, JSON ``{"ServerURL","Username","Secret"}``). Docker Hub's
key is ``https://index.docker.io/v1/``. An ``identitytoken`` (an OAuth2 refresh token) is
kept as such; a helper's ``<token>`` user name means the secret is an identity token.
Writes replace the file atomically (mode 0600) and keep every key shale does not know.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from shale.errors import RegistryError
from shale.record import record

INDEX_SERVER = "https://index.docker.io/v1/"
HUB_DOMAINS = ("docker.io", "index.docker.io", "registry-1.docker.io")


@record(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token)


def config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".docker"


def config_path() -> Path:
    return config_dir() / "config.json"


def server_key(domain: str) -> str:
    """The key docker files a registry's credentials under."""
    return INDEX_SERVER if domain in HUB_DOMAINS else domain


def _hostname(key: str) -> str:
    """docker's ConvertToHostname: ``https://host/v1/`` -> ``host``."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
    return key.split("/", 1)[0]


def load_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RegistryError(f"cannot read {path}: {e.strerror}") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: not a JSON object")
    return data


def save_config(data: dict[str, Any], path: Path | None = None) -> None:
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="config.json.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _helper_for(cfg: dict[str, Any], domain: str) -> str:
    key = server_key(domain)
    helpers = cfg.get("credHelpers")
    if isinstance(helpers, dict):
        for k in (key, domain):
            if isinstance(helpers.get(k), str) and helpers[k]:
                return str(helpers[k])
    store = cfg.get("credsStore")
    return store if isinstance(store, str) else ""


def get_credentials(domain: str, path: Path | None = None) -> Credentials:
    """Stored credentials for a registry, or empty ``Credentials`` when there are none."""
    cfg = load_config(path)
    helper = _helper_for(cfg, domain)
    if helper:
        return _helper_get(helper, server_key(domain))
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        return Credentials()
    entry = auths.get(server_key(domain))
    if entry is None:  # keys written with a scheme or a path, as older docker did
        want = _hostname(server_key(domain))
        entry = next((v for k, v in auths.items() if _hostname(k) == want), None)
    if not isinstance(entry, dict):
        return Credentials()
    user, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"invalid auth entry for {domain} in "
                                f"{path or config_path()}") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise RegistryError(f"invalid auth entry for {domain} in "
                                f"{path or config_path()}")
    return Credentials(user, password, str(entry.get("identitytoken") or ""))


def store_credentials(domain: str, creds: Credentials, path: Path | None = None) -> None:
    cfg = load_config(path)
    key = server_key(domain)
    helper = _helper_for(cfg, domain)
    if helper:
        user = "<token>" if creds.identity_token else creds.username
        secret = creds.identity_token or creds.password
        _helper_run(helper, "store", json.dumps(
            {"ServerURL": key, "Username": user, "Secret": secret}))
        return
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        auths = cfg["auths"] = {}
    entry: dict[str, Any] = {}
    if creds.identity_token:
        entry["auth"] = base64.b64encode(f"{creds.username}:".encode()).decode()
        entry["identitytoken"] = creds.identity_token
    else:
        entry["auth"] = base64.b64encode(
            f"{creds.username}:{creds.password}".encode()).decode()
    auths[key] = entry
    save_config(cfg, path)


def erase_credentials(domain: str, path: Path | None = None) -> bool:
    """Forget a registry's credentials; False when there were none."""
    cfg = load_config(path)
    key = server_key(domain)
    helper = _helper_for(cfg, domain)
    found = False
    if helper:
        found = bool(_helper_get(helper, key))
        if found:
            _helper_run(helper, "erase", key)
    auths = cfg.get("auths")
    if isinstance(auths, dict):
        want = _hostname(key)
        for k in [k for k in auths if k == key or _hostname(k) == want]:
            del auths[k]
            found = True
        if found:
            save_config(cfg, path)
    return found


def _helper_get(helper: str, server: str) -> Credentials:
    try:
        out = _helper_run(helper, "get", server)
    except RegistryError as e:
        if "credentials not found" in str(e).lower():
            return Credentials()
        raise
    try:
        data = json.loads(out)
    except ValueError:
        raise RegistryError(f"docker-credential-{helper}: invalid output") from None
    if not isinstance(data, dict):
        raise RegistryError(f"docker-credential-{helper}: invalid output")
    user, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    if user == "<token>":
        return Credentials("", "", secret)
    return Credentials(user, secret)


def _helper_run(helper: str, verb: str, stdin: str) -> str:
    import subprocess  # only with a credential helper: every pull and push imports this

    exe = f"docker-credential-{helper}"
    try:
        res = subprocess.run([exe, verb], input=stdin.encode(), capture_output=True,
                             timeout=60, check=False)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {exe} not found in PATH") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {exe} timed out") from None
    out = res.stdout.decode("utf-8", "replace").strip()
    if res.returncode != 0:
        msg = out or res.stderr.decode("utf-8", "replace").strip()
        raise RegistryError(f"error {verb} credentials - {exe}: {msg}")
    return out
