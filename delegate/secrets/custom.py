"""A custom secret manager: a script the customer provides, run on the delegate (``custom``).

Settings: ``script`` (the path of an executable) or ``inline`` (script text, run with
``shell -c``, ``shell`` defaulting to ``/bin/sh``); ``timeout`` in seconds (30);
``workdir`` (the delegate's working directory).

The script runs in a process group of its own with stdin from /dev/null. It learns what to
fetch from ``TETHER_SECRET_PATH``, ``TETHER_SECRET_KEY`` and ``TETHER_SECRET_VERSION``
(empty when the reference has none, so ``set -u`` scripts work), and gets each credential
as ``TETHER_CRED_<NAME>``. The rest of its environment is the delegate's, less the
delegate's own ``TETHER_*`` variables. It prints the value on stdout (at most 1 MiB); one
trailing newline is dropped, as ``echo`` adds it.

Failures report the exit code and how much went to stderr, never stderr itself: a script
that failed halfway may well have printed the value there.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from delegate.run.process import READ_CHUNK, Child, kill_group, spawn, terminate_group
from delegate.secrets.base import ProviderConfig, ReferenceProvider, SecretError, SecretRef
from shared.limits import MIB

__all__ = ["MAX_VALUE_BYTES", "CustomScript"]

MAX_VALUE_BYTES = 1 * MIB
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _TooLarge(Exception):
    pass


class CustomScript(ReferenceProvider):
    def __init__(
        self, config: ProviderConfig, *, timeout: float = 30.0, grace: float = 2.0
    ) -> None:
        self.kind = config.kind
        settings = config.settings
        script, inline = settings.get("script"), settings.get("inline")
        if bool(script) == bool(inline):
            raise SecretError(f"{self.kind}: give exactly one of the settings 'script', 'inline'")
        self._argv: list[str]
        if script:
            self._argv = [script]
            self._name = f"script {script}"
        else:
            assert inline is not None
            self._argv = [settings.get("shell") or "/bin/sh", "-c", inline]
            self._name = "inline script"
        self._timeout = timeout
        if settings.get("timeout"):
            try:
                self._timeout = float(settings["timeout"])
            except ValueError:
                self._timeout = 0.0
            if not self._timeout > 0:
                raise SecretError(f"{self.kind}: setting 'timeout' must be a positive number")
        self._grace = grace
        self._workdir = Path(settings["workdir"]) if settings.get("workdir") else None
        self._creds: dict[str, str] = {}
        for name, value in config.credentials.items():
            if not _NAME.fullmatch(name):
                raise SecretError(f"{self.kind}: credential name {name!r} is not usable in env")
            env_name = "TETHER_CRED_" + name.upper()
            if env_name in self._creds:
                raise SecretError(f"{self.kind}: two credentials map to {env_name}")
            self._creds[env_name] = value

    async def fetch(self, ref: SecretRef) -> bytes:
        where = f"'{ref.path}'"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env["TETHER_SECRET_PATH"] = ref.path
        env["TETHER_SECRET_KEY"] = ref.key or ""
        env["TETHER_SECRET_VERSION"] = ref.version or ""
        env.update(self._creds)
        try:
            child = await spawn(self._argv, cwd=self._workdir or Path.cwd(), env=env)
        except OSError as exc:
            raise SecretError(
                f"{self.kind}: cannot start {self._name} for {where}: {exc.strerror}"
            ) from None
        except ValueError:
            # e.g. a NUL byte in the environment; the message would quote the value.
            raise SecretError(f"{self.kind}: cannot start {self._name} for {where}") from None
        try:
            returncode, out, err_len = await self._collect(child)
        except TimeoutError:
            raise SecretError(
                f"{self.kind}: {self._name} for {where} timed out after {self._timeout:g} s"
            ) from None
        except _TooLarge:
            raise SecretError(
                f"{self.kind}: {self._name} for {where} printed more than {MAX_VALUE_BYTES} bytes"
            ) from None
        if returncode < 0:
            raise SecretError(
                f"{self.kind}: {self._name} for {where} was killed by signal {-returncode}"
                f" (stderr: {err_len} bytes)"
            )
        if returncode != 0:
            raise SecretError(
                f"{self.kind}: {self._name} for {where} exited with code {returncode}"
                f" (stderr: {err_len} bytes)"
            )
        return out[:-1] if out.endswith(b"\n") else out

    async def _collect(self, child: Child) -> tuple[int, bytes, int]:
        out = asyncio.create_task(_read_bounded(child.stdout.reader, MAX_VALUE_BYTES))
        err = asyncio.create_task(_count(child.stderr.reader))
        exited = asyncio.create_task(child.proc.wait())
        tasks = (out, err, exited)
        try:
            async with asyncio.timeout(self._timeout):
                # stdout ends first (EOF: wait for the exit) unless it overflows (raise now).
                done, _ = await asyncio.wait({out, exited}, return_when=asyncio.FIRST_COMPLETED)
                if out in done:
                    out.result()
                returncode = await exited
                kill_group(child.pgid)  # background children must not outlive the fetch
                # What still holds a pipe left the group (setsid): stop waiting for it.
                _, pending = await asyncio.wait({out, err}, timeout=self._grace)
                if pending:
                    child.close()
                return returncode, await out, await err
        except BaseException:
            await terminate_group(child.proc, self._grace)
            raise
        finally:
            kill_group(child.pgid)
            child.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def check(self) -> None:
        """The program exists and may be run; the script itself runs only on a fetch."""
        await asyncio.to_thread(self._check_files)

    def _check_files(self) -> None:
        name = self._argv[0]
        found = name if "/" in name else shutil.which(name)
        if found is None or not Path(found).is_file():
            raise SecretError(f"{self.kind}: {name} is not a file")
        if not os.access(found, os.X_OK):
            raise SecretError(f"{self.kind}: {name} is not executable")
        if self._workdir is not None and not self._workdir.is_dir():
            raise SecretError(f"{self.kind}: workdir {self._workdir} is not a directory")


async def _read_bounded(reader: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await reader.read(READ_CHUNK):
        buf += chunk
        if len(buf) > limit:
            raise _TooLarge
    return bytes(buf)


async def _count(reader: asyncio.StreamReader) -> int:
    total = 0
    while chunk := await reader.read(READ_CHUNK):
        total += len(chunk)
    return total
