"""The delegate's HTTPS client for the manager's delegate plane.

It owns the session credential: a call answered 401 because the credential expired or the
manager no longer knows it registers again with the token and retries once, so callers
never see that case. A revoked or unknown token is :class:`FatalAuth`: the delegate stops.

Exceptions (all :class:`ApiError`):
    FatalAuth            the token is revoked or unknown; exit with status 3
    UnsupportedProtocol  the manager does not speak this delegate's protocol; exit 4
    Unreachable          network failure, timeout or 5xx; retry later
    Rejected             any other 4xx, with the manager's code (taken, gone, stale_attempt)
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import ClassVar, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from delegate.link.policy import Meaning, meaning
from shared.protocol import (
    AcquireResponse,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LogBatch,
    LogBatchAck,
    RegisterRequest,
    RegisterResponse,
    ResultAck,
    TaskResult,
)

__all__ = [
    "ApiError",
    "FatalAuth",
    "ManagerApi",
    "Rejected",
    "Unreachable",
    "UnsupportedProtocol",
    "frame_json",
]

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    # What the failure means for the link (delegate.link.policy decides what to do).
    meaning: ClassVar[Meaning] = Meaning.RETRY


class FatalAuth(ApiError):
    meaning = Meaning.TOKEN_REFUSED


class UnsupportedProtocol(ApiError):
    meaning = Meaning.UNSUPPORTED


class Unreachable(ApiError):
    meaning = Meaning.RETRY


class Rejected(ApiError):
    meaning = Meaning.REJECTED

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class ManagerApi:
    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        registration: RegisterRequest,
        ssl_context: ssl.SSLContext,
        request_timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._registration = registration
        self.ssl_context = ssl_context
        self._timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._register_lock = asyncio.Lock()
        self.credential: str | None = None
        self.registered: RegisterResponse | None = None
        # Told of every registration, including those made inside a call whose session ran
        # out, so the link always works with the manager's current timings.
        self.on_registered: Callable[[RegisterResponse], None] | None = None

    async def __aenter__(self) -> ManagerApi:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context, limit=64),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=None),
            trust_env=True,  # HTTPS_PROXY / NO_PROXY, as customers' networks need
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def request_timeout(self) -> float:
        """How long a call waits for its answer (a long-poll: its wait on top)."""
        return self._timeout

    @property
    def stream_url(self) -> str:
        return "wss://" + self.base_url.removeprefix("https://") + "/api/v1/delegate/stream"

    # -- calls ----------------------------------------------------------------------------

    async def register(self) -> RegisterResponse:
        async with self._register_lock:
            resp = await self._request(
                "POST", "/register", self._registration, auth=self._token, model=RegisterResponse
            )
            assert resp is not None
            self.credential = resp.session_token
            self.registered = resp
            if self.on_registered is not None:
                self.on_registered(resp)
            return resp

    async def heartbeat(self, frame: Heartbeat) -> HeartbeatAck:
        return _present(await self._call("POST", "/heartbeat", frame, HeartbeatAck))

    async def next_task(self, wait: float, key: str) -> AcquireResponse | None:
        """An assignment already claimed for this delegate, or None when none came within
        ``wait``; ``key`` names this process (as its stream hello does)."""
        return await self._call(
            "GET",
            f"/tasks/next?wait={wait:.3f}&key={key}",
            None,
            AcquireResponse,
            timeout=wait + self._timeout,
        )

    async def post_logs(self, task_id: str, batch: LogBatch) -> LogBatchAck:
        return _present(await self._call("POST", f"/tasks/{task_id}/logs", batch, LogBatchAck))

    async def post_result(self, task_id: str, result: TaskResult) -> ResultAck:
        return _present(await self._call("POST", f"/tasks/{task_id}/result", result, ResultAck))

    # -- plumbing -------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        model: type[M],
        *,
        timeout: float | None = None,
    ) -> M | None:
        if self.credential is None:
            await self.register()
        credential = self.credential
        try:
            return await self._request(
                method, path, body, auth=credential, model=model, timeout=timeout
            )
        except _SessionInvalid:
            # Another caller may have re-registered meanwhile; only one registers again.
            if self.credential == credential:
                await self.register()
            return await self._request(
                method, path, body, auth=self.credential, model=model, timeout=timeout
            )

    async def _request(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        *,
        auth: str | None,
        model: type[M],
        timeout: float | None = None,
    ) -> M | None:
        assert self._session is not None, "use ManagerApi as an async context manager"
        url = f"{self.base_url}/api/v1/delegate{path}"
        headers = {"Authorization": f"Bearer {auth}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = (
                frame_json(body) if isinstance(body, Heartbeat) else body.model_dump_json()
            ).encode()
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError) as exc:
            # RuntimeError: an event loop's transport bookkeeping after a connection reset
            # ("file descriptor is used by transport"); the next attempt starts clean.
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if status == 204:
            return None
        if status < 300:
            try:
                return model.model_validate_json(raw)
            except ValidationError as exc:
                raise Unreachable(
                    f"unexpected answer from the manager: {exc.error_count()} errors"
                ) from None
        code, message = _error(raw, status)
        what = meaning(status, code)
        if what is Meaning.TOKEN_REFUSED:
            raise FatalAuth(message)
        if what is Meaning.REREGISTER:
            raise _SessionInvalid(message)
        if what is Meaning.UNSUPPORTED:
            raise UnsupportedProtocol(message)
        if what is Meaning.RETRY:
            raise Unreachable(f"manager answered {status}: {message}")
        raise Rejected(status, code, message)


def frame_json(frame: Hello | Heartbeat) -> str:
    """The frame as sent: without an empty ``spooled``, which a manager from before it
    would refuse as an unknown field."""
    return frame.model_dump_json(exclude=None if frame.spooled else {"spooled"})


class _SessionInvalid(ApiError):
    meaning = Meaning.REREGISTER


def _present(value: M | None) -> M:
    if value is None:
        raise Unreachable("the manager answered with no content")
    return value


def _error(raw: bytes, status: int) -> tuple[str, str]:
    try:
        err = json.loads(raw)["error"]
        return str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        return "http_error", f"HTTP {status}"
