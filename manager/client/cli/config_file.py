"""The CLI's configuration file: named contexts (a manager URL, its CA file, and the session
``tether login`` stored for it), and which one is current.

It lives in ``$TETHER_CONFIG_DIR`` (else ``$XDG_CONFIG_HOME/tether``, else ``~/.config/tether``)
as ``config.json``, mode 0600 in a 0700 directory: it holds session tokens. Written whole to
a fresh file and renamed over the old one, so a reader never sees half of it::

    {"current": "prod",
     "contexts": {"prod": {"manager_url": "https://manager.example.com:8443",
                           "ca_file": "/etc/tether/ca.pem",
                           "session": {"token": "...", "expires_at": 1.8e9,
                                       "email": "dev@example.com"}}}}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from manager.client.cli.context import UsageError

__all__ = [
    "ENV_CONFIG_DIR",
    "ENV_CONTEXT",
    "FILE",
    "ConfigFile",
    "NamedContext",
    "StoredSession",
    "config_dir",
    "context_name_for",
    "private_dir",
]

ENV_CONFIG_DIR = "TETHER_CONFIG_DIR"
ENV_CONTEXT = "TETHER_CONTEXT"
FILE = "config.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def config_dir(env: Mapping[str, str]) -> Path:
    if env.get(ENV_CONFIG_DIR):
        return Path(env[ENV_CONFIG_DIR])
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "tether"


@dataclass(frozen=True)
class StoredSession:
    manager_url: str
    token: str = field(repr=False)
    expires_at: float
    email: str

    @property
    def live(self) -> bool:
        return self.expires_at > time.time()


@dataclass(frozen=True)
class NamedContext:
    name: str
    manager_url: str
    ca_file: Path | None = None
    session: StoredSession | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"manager_url": self.manager_url}
        if self.ca_file is not None:
            data["ca_file"] = str(self.ca_file)
        if self.session is not None:
            s = self.session
            data["session"] = {"token": s.token, "expires_at": s.expires_at, "email": s.email}
        return data


def _context(name: str, data: Any) -> NamedContext | None:
    """One entry of the file, or None for one that is not what this version writes."""
    try:
        url = str(data["manager_url"])
        ca = Path(data["ca_file"]) if data.get("ca_file") else None
        session = None
        if isinstance(data.get("session"), dict):
            s = data["session"]
            session = StoredSession(url, str(s["token"]), float(s["expires_at"]), str(s["email"]))
        return NamedContext(name, url, ca, session)
    except (KeyError, TypeError, ValueError):
        return None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"context name {name!r}: letters, digits and . _ : @ -, starting with a letter or "
            "digit; at most 128 characters"
        )
    return name


def context_name_for(url: str) -> str:
    """A context's default name: the manager's host (``manager.example.com``)."""
    host = urlsplit(url).hostname or "default"
    return host if _NAME.match(host) else "default"


def private_dir(path_dir: Path) -> None:
    """Make ``path_dir`` (0700), or refuse one that others can get into."""
    path_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path_dir.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        # A shared directory would let others read the token, or plant the file beforehand.
        raise UsageError(f"{path_dir} must be yours alone (chmod 700 {path_dir})")


@dataclass
class ConfigFile:
    """The file's contents; :meth:`load` it, change it, :meth:`save` it."""

    directory: Path
    current: str | None = None
    contexts: dict[str, NamedContext] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / FILE

    @classmethod
    def load(cls, directory: Path) -> ConfigFile:
        """The file as it is; empty when there is none. A file that is not JSON is an error:
        overwriting it would lose the user's contexts."""
        path = directory / FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(directory)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot read {path}: {getattr(exc, 'strerror', None) or exc} "
                "(fix or remove the file)"
            ) from None
        contexts: dict[str, NamedContext] = {}
        raw = data.get("contexts") if isinstance(data, dict) else None
        for name, entry in (raw or {}).items() if isinstance(raw, dict) else ():
            ctx = _context(str(name), entry)
            if ctx is not None:
                contexts[ctx.name] = ctx
        current = data.get("current") if isinstance(data, dict) else None
        return cls(directory, current if current in contexts else None, contexts)

    def save(self) -> Path:
        private_dir(self.directory)
        body = {
            "current": self.current,
            "contexts": {n: c.to_json() for n, c in sorted(self.contexts.items())},
        }
        # mkstemp: created 0600 with O_EXCL under a random name (no one can have planted it or
        # a link in its place), then renamed over the old one.
        fd, scratch = tempfile.mkstemp(dir=self.directory, prefix=f".{FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=2)
            os.replace(scratch, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(scratch)
            raise
        return self.path

    def get(self, name: str) -> NamedContext:
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none yet: tether context add NAME URL"
            raise UsageError(f"no context {name!r} (contexts: {known})") from None

    def put(self, ctx: NamedContext) -> None:
        self.contexts[ctx.name] = ctx
        if self.current is None:
            self.current = ctx.name

    def remove(self, name: str) -> NamedContext:
        ctx = self.get(name)
        del self.contexts[name]
        if self.current == name:
            self.current = None
        return ctx

    def with_session(self, name: str, session: StoredSession | None) -> NamedContext:
        ctx = replace(self.get(name), session=session)
        self.contexts[name] = ctx
        return ctx

    def find_url(self, url: str) -> NamedContext | None:
        """The context of this manager URL (the current one first), if there is one."""
        key = url.rstrip("/")
        ordered = sorted(self.contexts.values(), key=lambda c: c.name != self.current)
        return next((c for c in ordered if c.manager_url.rstrip("/") == key), None)
