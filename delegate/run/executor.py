"""Runs one task (shell, http, capability, verify, or one of the manager's secret operations) and
says how it ended.

Everything the task prints goes through the ``LogStream`` (and so through the task's
masker); every error text and output value is masked as well, since a URL, a path or an
output variable can carry a secret as easily as a log line can (an output variable whose
*name* carries one is dropped). :func:`execute` closes the log stream before it returns, so
every line is in the sink by the time the result exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from delegate.run.isolation import TaskUser
from delegate.run.logstream import LogStream, OutputStream
from delegate.run.process import (
    Child,
    OutputPipe,
    OutputPump,
    drain,
    spawn,
    terminate_group,
)
from delegate.run.redirects import MAX_REDIRECTS, Hop, Stop, next_hop
from delegate.run.switch import InProcess, Switcher
from delegate.run.taskdirs import TaskDir, TaskDirs
from delegate.secrets.base import SecretError
from delegate.secrets.ops import describe, run_secret_op
from delegate.secrets.providers import ManagerCredentials, Providers
from delegate.verify.runner import run_verification
from shared.limits import KIB, MAX_OUTPUT_BYTES
from shared.protocol import CapabilityPayload, HttpPayload, ShellPayload, TaskSpec, VerifyPayload
from shared.secretspec import SecretOpPayload

__all__ = ["ExecutionResult", "Status", "execute"]

Status = Literal["succeeded", "failed", "cancelled", "timed_out"]
T = TypeVar("T")

# Only what a script commonly needs from the delegate's own environment: the service's
# environment may hold the delegate's credentials (Vault token, cloud keys).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "SHELL")
_OUTPUT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_HTTP_BODY_LOG = 64 * KIB


@dataclass(frozen=True)
class ExecutionResult:
    status: Status
    exit_code: int | None
    outputs: dict[str, str]
    error: str | None
    started_at: float
    finished_at: float


class _Stop(enum.Enum):
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class _Outcome:
    status: Status
    exit_code: int | None = None
    outputs: dict[str, str] | None = None
    error: str | None = None


async def execute(
    spec: TaskSpec,
    *,
    secret_env: Mapping[str, str],
    log: LogStream,
    cancel: asyncio.Event,
    kill_grace: float,
    work_root: Path,
    task_dirs: TaskDirs | None = None,
    secret_files: Mapping[str, bytes] | None = None,
    credentials: ManagerCredentials | None = None,
    user: TaskUser | None = None,
    switcher: Switcher | None = None,
    clock: Callable[[], float] = time.time,
) -> ExecutionResult:
    """Run ``spec`` until it ends, times out (``spec.timeout_s``) or ``cancel`` is set.

    ``secret_env`` values must already be registered with ``log.masker``: the masker has
    to know a value before the first byte that could contain it is read. A shell task also
    gets ``secret_files`` (variable -> content): each is written, 0600, into the task's
    private directory, which is removed when the task ends, and the variable holds its
    path. ``credentials`` are the secret managers' credentials a secret operation uses.
    With ``user``, a shell task runs as that user and its directory is handed to it, by
    ``switcher`` (by default, this process switches users itself).
    """
    started_at = clock()
    try:
        if cancel.is_set():
            outcome = _Outcome("cancelled", error="cancelled before start")
        else:
            payload = spec.payload
            if isinstance(payload, ShellPayload):
                outcome = await _run_shell(
                    spec,
                    payload,
                    secret_env,
                    secret_files or {},
                    log,
                    cancel,
                    kill_grace,
                    task_dirs or TaskDirs(work_root, keep=0),
                    None if user is None else (user, switcher or InProcess([user])),
                )
            elif isinstance(payload, HttpPayload):
                outcome = await _run_http(spec, payload, log, cancel)
            elif isinstance(payload, CapabilityPayload):
                outcome = await _run_capability(spec, payload, log, cancel)
            elif isinstance(payload, VerifyPayload):
                outcome = await _run_verify(spec, payload, log, cancel, clock)
            else:
                outcome = await _run_secret_op(
                    spec, payload, secret_env, credentials or ManagerCredentials.none(), log, cancel
                )
    except Exception as exc:
        outcome = _Outcome("failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        await log.close()
    mask = log.masker.mask_text
    return ExecutionResult(
        status=outcome.status,
        exit_code=outcome.exit_code,
        outputs={k: mask(v) for k, v in (outcome.outputs or {}).items()},
        error=None if outcome.error is None else mask(outcome.error),
        started_at=started_at,
        finished_at=clock(),
    )


async def _guarded(
    coro: Coroutine[Any, Any, T], cancel: asyncio.Event, seconds: float
) -> T | _Stop:
    """``coro``'s result, or why it was stopped; its exceptions propagate."""
    work = asyncio.ensure_future(coro)
    stop = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait(
            {work, stop}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work in done:
        return work.result()
    return _Stop.CANCELLED if cancel.is_set() else _Stop.TIMED_OUT


def _stopped(stop: _Stop, spec: TaskSpec, exit_code: int | None = None) -> _Outcome:
    if stop is _Stop.CANCELLED:
        return _Outcome("cancelled", exit_code, error="cancelled")
    return _Outcome("timed_out", exit_code, error=f"timed out after {spec.timeout_s:g} s")


# --- shell ------------------------------------------------------------------------------


async def _run_shell(
    spec: TaskSpec,
    payload: ShellPayload,
    secret_env: Mapping[str, str],
    secret_files: Mapping[str, bytes],
    log: LogStream,
    cancel: asyncio.Event,
    kill_grace: float,
    task_dirs: TaskDirs,
    slot: tuple[TaskUser, Switcher] | None,
) -> _Outcome:
    user = None if slot is None else slot[0]
    script = payload.script.encode()
    # A task run as the delegate's own user may get a kept directory (delegate.run.taskdirs).
    reuse = slot is None
    if reuse and not secret_files and payload.working_dir is None and task_dirs.has_kept():
        # A kept directory is checked and written in place with a few calls, cheaper than a
        # hop to a worker thread.
        made = task_dirs.make(script, {}, None, reuse=True)
    else:
        # The directory's files are made in one worker-thread hop, not one per file: a hop
        # costs more than the small writes it carries (docs/benchmarks.md).
        made = await asyncio.to_thread(
            task_dirs.make, script, secret_files, payload.working_dir, reuse=reuse
        )
    try:
        if made.error is not None:
            return _Outcome("failed", error=made.error)
        env = _child_env(
            spec, payload, {**secret_env, **made.file_env}, made.task_dir, made.output_file, user
        )
        argv = [payload.interpreter, str(made.script)]
        try:
            if slot is None:
                child = await spawn(argv, cwd=made.cwd, env=env)
            else:
                child = await slot[1].start(
                    slot[0], argv, task_dir=made.task_dir, cwd=made.cwd, env=env
                )
        except OSError as exc:
            return _Outcome(
                "failed", error=f"cannot start {payload.interpreter}: {exc.strerror or exc}"
            )
        outcome = await _supervise(spec, child, log, cancel, kill_grace)
        outputs = await _read_outputs(made.output_fd, log)
        return _Outcome(outcome.status, outcome.exit_code, outputs, outcome.error)
    finally:
        # Whatever happened: the directory holds the script and any secret files.
        await _release_task_dir(task_dirs, made, slot)


async def _release_task_dir(
    task_dirs: TaskDirs, made: TaskDir, slot: tuple[TaskUser, Switcher] | None
) -> None:
    if slot is None:
        if not task_dirs.release(made):
            await asyncio.to_thread(task_dirs.remove, made)
        return
    task_dirs.forget(made)
    # As the task's user: its leftover processes die before the slot serves another task,
    # and what it wrote is removed with its own rights, not the delegate's.
    await slot[1].sweep(slot[0], made.task_dir)
    with contextlib.suppress(OSError):
        # Not empty only when the sweep failed; the next start clears it.
        await asyncio.to_thread(made.task_dir.rmdir)


def _child_env(
    spec: TaskSpec,
    payload: ShellPayload,
    secret_env: Mapping[str, str],
    task_dir: Path,
    output_file: Path,
    user: TaskUser | None,
) -> dict[str, str]:
    # The allowlist keeps the delegate's own credentials (TETHER_TOKEN and the like) out.
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env["TMPDIR"] = str(task_dir)
    if user is not None:
        # Not the delegate's: its home would be unreadable, or worse, readable.
        env.update(HOME=str(task_dir), USER=user.name, LOGNAME=user.name)
    env.update(payload.env)
    env.update(secret_env)
    env["TETHER_TASK_ID"] = spec.id
    env["TETHER_OUTPUT"] = str(output_file)
    return env


async def _supervise(
    spec: TaskSpec, child: Child, log: LogStream, cancel: asyncio.Event, kill_grace: float
) -> _Outcome:
    pumps = [_pump(child.stdout, "stdout", log), _pump(child.stderr, "stderr", log)]
    flusher = asyncio.create_task(log.flush_periodically())
    try:
        waited = await _guarded(child.proc.wait(), cancel, spec.timeout_s)
        if isinstance(waited, _Stop):
            await terminate_group(child.proc, kill_grace)
        else:
            child.kill_group()  # orphans; see process.kill_group
        if await drain(pumps, kill_grace):
            await log.system(
                "a process outside the task's process group still held its output open; "
                "stopped reading it"
            )
    finally:
        flusher.cancel()
        for pump in pumps:
            pump.task.cancel()
        child.close()
        if child.proc.returncode is None:
            # execute() itself was cancelled (the delegate is shutting down).
            child.kill_group()
            await asyncio.shield(child.proc.wait())
    exit_code = await child.proc.wait()  # already reaped: returns at once
    if isinstance(waited, _Stop):
        return _stopped(waited, spec, exit_code)
    if exit_code == 0:
        return _Outcome("succeeded", 0)
    if exit_code < 0:
        return _Outcome("failed", exit_code, error=f"killed by signal {_signal_name(-exit_code)}")
    return _Outcome("failed", exit_code, error=f"exit code {exit_code}")


def _pump(pipe: OutputPipe, stream: OutputStream, log: LogStream) -> OutputPump:
    async def write(chunk: bytes) -> None:
        await log.write(stream, chunk)

    return OutputPump(pipe, write)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


async def _read_outputs(fd: int, log: LogStream) -> dict[str, str]:
    if os.fstat(fd).st_size == 0:
        # Most tasks write no outputs: no worker-thread hop to read nothing.
        return {}
    data = await asyncio.to_thread(_read_head, fd, MAX_OUTPUT_BYTES + 1)
    if len(data) > MAX_OUTPUT_BYTES:
        # The part of a line beyond the cap would be a wrong value, not a shorter one.
        data = data[:MAX_OUTPUT_BYTES].rpartition(b"\n")[0]
        await log.system(f"$TETHER_OUTPUT is larger than {MAX_OUTPUT_BYTES} bytes; rest ignored")
    outputs: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not _OUTPUT_KEY.fullmatch(key):
            await log.system(f"$TETHER_OUTPUT line {number} is not KEY=VALUE; ignored")
            continue
        if "\x00" in value:
            # No store keeps a NUL in text; the task's log keeps such bytes exactly.
            await log.system(f"$TETHER_OUTPUT line {number} has a NUL byte in its value; ignored")
            continue
        if log.masker.mask_text(key) != key:
            # Values are masked on the way out, but a name is the key of the result: a
            # masked one would collide with others and say nothing, so the line goes.
            await log.system(f"$TETHER_OUTPUT line {number} has a secret in its name; ignored")
            continue
        outputs[key] = value
    return outputs


def _read_head(fd: int, limit: int) -> bytes:
    # The file the task was given: one it deleted or replaced gives no outputs.
    chunks: list[bytes] = []
    got = 0
    while got < limit:
        chunk = os.pread(fd, limit - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --- http -------------------------------------------------------------------------------


@cache
def _tls_context() -> ssl.SSLContext:
    # The system trust store, as any other client on the customer's host would use.
    return ssl.create_default_context()


async def _run_http(
    spec: TaskSpec, payload: HttpPayload, log: LogStream, cancel: asyncio.Event
) -> _Outcome:
    context = await asyncio.to_thread(_tls_context)
    try:
        got = await _guarded(_http_request(payload, log, context), cancel, spec.timeout_s)
    except TimeoutError:
        # aiohttp's own timeouts are off; this is a socket-level one, still a timeout.
        return _stopped(_Stop.TIMED_OUT, spec)
    except aiohttp.ClientError as exc:
        # The message names the host and the cause, never the request's headers.
        return _Outcome("failed", error=f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        return _Outcome("failed", error=f"{type(exc).__name__}: {exc.strerror or exc}")
    except ValueError as exc:
        # A header or URL aiohttp refuses; its text could quote a header value.
        return _Outcome("failed", error=f"invalid request ({type(exc).__name__})")
    except _TooManyRedirects as exc:
        return _Outcome("failed", error=str(exc))
    if isinstance(got, _Stop):
        return _stopped(got, spec)
    status, truncated = got
    if truncated:
        await log.close()  # the body's last partial line first, then the note
        await log.system(f"[truncated] response body beyond {_MAX_HTTP_BODY_LOG} bytes not shown")
    ok = status in payload.expect_status if payload.expect_status else 200 <= status < 300
    outputs = {"status_code": str(status)}
    if ok:
        return _Outcome("succeeded", outputs=outputs)
    return _Outcome("failed", outputs=outputs, error=f"unexpected status {status}")


async def _http_request(
    payload: HttpPayload, log: LogStream, context: ssl.SSLContext
) -> tuple[int, bool]:
    first = URL(payload.url)
    hop = Hop(
        payload.method,
        first,
        dict(payload.headers),
        None if payload.body is None else payload.body.encode(),
    )

    def holds_secret(value: str) -> bool:
        return log.masker.mask_text(value) != value

    # No timeout of aiohttp's own: _guarded applies spec.timeout_s to the whole exchange.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.request(
                hop.method,
                hop.url,
                headers=hop.headers,
                data=hop.body,
                ssl=context,
                # Followed here, by policy (delegate/run/redirects.py), never by aiohttp.
                allow_redirects=False,
            ) as response:
                await log.write(
                    "stdout", f"HTTP {response.status} {response.reason or ''}\n".encode()
                )
                step = next_hop(
                    payload.follow_redirects,
                    first,
                    hop,
                    response.status,
                    response.headers.get("Location"),
                    holds_secret,
                )
                if isinstance(step, Hop):
                    hop = step
                    continue
                if isinstance(step, Stop):
                    await log.system(step.reason)
                received = 0
                while received < _MAX_HTTP_BODY_LOG:
                    chunk = await response.content.read(_MAX_HTTP_BODY_LOG - received)
                    if not chunk:
                        break
                    received += len(chunk)
                    await log.write("stdout", chunk)
                truncated = received >= _MAX_HTTP_BODY_LOG and bool(await response.content.read(1))
                return response.status, truncated
    raise _TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")


class _TooManyRedirects(Exception):
    pass


# --- secret operations ----------------------------------------------------------------


async def _run_secret_op(
    spec: TaskSpec,
    payload: SecretOpPayload,
    secret_env: Mapping[str, str],
    credentials: ManagerCredentials,
    log: LogStream,
    cancel: asyncio.Event,
) -> _Outcome:
    for value in credentials.values():
        # The agent registered them already; a direct caller may not have.
        log.masker.add(value)
    providers = Providers(credentials)
    try:
        got = await _guarded(
            run_secret_op(payload, task_id=spec.id, secret_env=secret_env, providers=providers),
            cancel,
            spec.timeout_s,
        )
    except SecretError as exc:
        return _Outcome("failed", error=f"{describe(payload)}: {exc}")
    except Exception as exc:
        # The task's masker does not know a key unwrapped here, and a vendor library's
        # message may quote what it was handed: the type only.
        return _Outcome("failed", error=f"{describe(payload)}: failed ({type(exc).__name__})")
    finally:
        await providers.aclose()
    if isinstance(got, _Stop):
        return _stopped(got, spec)
    # Names and kinds only: the outputs are wrapped or sealed keys, and stay out of the log.
    await log.write("stdout", f"{describe(payload)}: done\n".encode())
    return _Outcome("succeeded", outputs=got)


# --- capability -------------------------------------------------------------------------


async def _run_capability(
    spec: TaskSpec, payload: CapabilityPayload, log: LogStream, cancel: asyncio.Event
) -> _Outcome:
    target = _parse_target(payload.target)
    if isinstance(target, str):
        return _Outcome("failed", error=target)
    host, port, tls = target
    where = f"{host}:{port}"
    context = await asyncio.to_thread(_tls_context) if tls else None
    try:
        got = await _guarded(_connect(host, port, context), cancel, spec.timeout_s)
    except socket.gaierror as exc:
        return _Outcome("failed", error=f"DNS lookup for {host} failed: {exc.strerror}")
    except ssl.SSLCertVerificationError as exc:
        return _Outcome("failed", error=f"TLS verification of {where} failed: {exc.verify_message}")
    except ssl.SSLError as exc:
        return _Outcome("failed", error=f"TLS handshake with {where} failed: {exc.reason}")
    except ConnectionRefusedError:
        return _Outcome("failed", error=f"connection to {where} refused")
    except OSError as exc:
        return _Outcome("failed", error=f"cannot connect to {where}: {exc.strerror or exc}")
    if got is _Stop.CANCELLED:
        return _stopped(got, spec)
    if got is _Stop.TIMED_OUT:
        # For a reachability check, no answer in time is an answer: unreachable.
        return _Outcome("failed", error=f"no answer from {where} within {spec.timeout_s:g} s")
    await log.write("stdout", f"reached {where}{' (TLS verified)' if tls else ''}\n".encode())
    return _Outcome("succeeded", outputs={"reachable": "true"})


def _parse_target(target: str) -> tuple[str, int, bool] | str:
    """(host, port, tls) from ``host:port``, ``https://…`` or ``http://…``; else why not."""
    if "://" in target:
        try:
            url = urlsplit(target)
            port = url.port
        except ValueError as exc:
            return f"invalid target URL: {exc}"
        if url.scheme not in ("http", "https") or not url.hostname:
            return "target URL must be http:// or https:// with a host"
        tls = url.scheme == "https"
        return url.hostname, port or (443 if tls else 80), tls
    host, sep, port_text = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:443
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return "target must be host:port or an http(s):// URL"
    return host, int(port_text), False


async def _connect(host: str, port: int, context: ssl.SSLContext | None) -> None:
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    writer.close()
    # Reachability is proven; how the goodbye went does not matter.
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


# --- verify -----------------------------------------------------------------------------


async def _run_verify(
    spec: TaskSpec,
    payload: VerifyPayload,
    log: LogStream,
    cancel: asyncio.Event,
    clock: Callable[[], float],
) -> _Outcome:
    async def line(text: str) -> None:
        await log.write("stdout", f"{text}\n".encode())

    got = await _guarded(run_verification(payload, log=line, clock=clock), cancel, spec.timeout_s)
    if isinstance(got, _Stop):
        return _stopped(got, spec)
    outputs = {"verdict": got.verdict, "reason": got.reason, "report": got.model_dump_json()}
    if got.verdict == "passed":
        return _Outcome("succeeded", outputs=outputs)
    if got.verdict == "inconclusive" and got.on_inconclusive == "pass_with_warning":
        await log.system(
            f"warning: verification inconclusive, passed as the spec asks: {got.reason}"
        )
        return _Outcome("succeeded", outputs=outputs)
    return _Outcome("failed", outputs=outputs, error=f"verification {got.verdict}: {got.reason}")
