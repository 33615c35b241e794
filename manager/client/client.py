"""Typed async client of the manager's REST API (``/api/v1``), used by the CLI and by users.

    async with TetherClient("https://manager:8443", api_key=key, ca_file=ca) as client:
        task = await client.submit_task(TaskSubmit(payload=ShellPayload(script="make test")))
        async for event in client.follow_logs(task.id):
            ...

Exceptions (every public method raises only these, plus pydantic's ``ValidationError`` when
a model is built from bad arguments)::

    TetherClientError
    ├── ApiError            the manager answered with a non-2xx status
    ├── ConnectionFailed    no answer: refused, TLS failure, timeout, stream broken too often
    └── InvalidResponse     a 2xx answer that does not fit the API models

The API key goes in the ``Authorization`` header only; it is never part of a message or a
repr, and redirects are not followed, so it cannot be sent to another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError
from yarl import URL

from manager.schemas.access import (
    AllowlistEntryCreate,
    AllowlistEntryView,
    AllowlistView,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyDefaults,
    ApiKeyDefaultsUpdate,
    ApiKeyList,
    ApiKeyView,
    Confirm,
    TrustedProxies,
    TrustedProxiesPut,
)
from manager.schemas.audit import (
    AuditFilterCreate,
    AuditFilterList,
    AuditFilterView,
    AuditList,
    AuditQueryModel,
    AuditVerifyReport,
)
from manager.schemas.auth import (
    AuthSettings,
    InviteAccept,
    LoggedOut,
    LoginRequest,
    LoginResult,
    Me,
    PasswordChange,
    SecondFactor,
    SsoLinkRequest,
    SsoLinkStart,
    SsoLinkView,
    SsoPoll,
    SsoSession,
    SsoStart,
    SsoStarted,
    SsoUnlinked,
    TotpConfirm,
    TotpConfirmed,
    TotpEnrolment,
    TotpEnrolStart,
)
from manager.schemas.directory import (
    AppCreate,
    AppList,
    AppView,
    EnvCreate,
    EnvList,
    EnvUpdate,
    EnvView,
    GroupCreate,
    GroupList,
    GroupUpdate,
    GroupView,
    UserCreate,
    UserCreated,
    UserList,
    UserUpdate,
    UserView,
)
from manager.schemas.directory_auth import (
    LdapLogin,
    LdapSettings,
    SamlSettings,
    ScimTokenCreate,
    ScimTokenCreated,
    ScimTokenList,
    ScimTokenRevoked,
    SettingsDeleted,
)
from manager.schemas.freezes import FreezeCreate, FreezeList, FreezeView
from manager.schemas.incidents import (
    IncidentList,
    IncidentNote,
    IncidentRetention,
    IncidentSummary,
    IncidentView,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookView,
)
from manager.schemas.retention import RetentionSettings
from manager.schemas.runbooks import (
    ApprovalDecision,
    RunbookDefinition,
    RunbookList,
    RunbookView,
    RunList,
    RunStart,
    RunView,
    StandardDefinition,
    StandardList,
    StandardView,
)
from manager.schemas.secrets import (
    ScopePut,
    ScopeSpec,
    SecretCreate,
    SecretList,
    SecretManagerCreate,
    SecretManagerList,
    SecretManagerTestResult,
    SecretManagerUpdate,
    SecretManagerView,
    SecretMigrate,
    SecretUpdate,
    SecretVersionList,
    SecretView,
)
from manager.schemas.tasks import (
    DelegateView,
    LogEntry,
    LogPage,
    ProfileList,
    ProfilePut,
    ProfileView,
    TaskList,
    TaskSubmit,
    TaskView,
    TokenCreate,
    TokenCreated,
    TokenView,
)
from manager.schemas.verify import VerificationList, VerificationPut, VerificationView, VerifyRun
from shared import __version__
from shared.protocol import TaskState

__all__ = [
    "ApiError",
    "ConnectionFailed",
    "EndEvent",
    "FollowEvent",
    "InvalidResponse",
    "LogEvent",
    "StateEvent",
    "TetherClient",
    "TetherClientError",
    "tls_client_context",
]

_M = TypeVar("_M", bound=BaseModel)
# Calls a delegate must answer first (a secret manager test, a KMS wrap): the manager waits
# up to twice its secret operation timeout for them.
SLOW_CALL_S = 150.0

# A follow line carries at most one TaskView, whose script is capped at 1 MiB (JSON escaping
# can multiply that); anything longer is not a line of this protocol.
_MAX_FOLLOW_LINE = 16 * 1024 * 1024
# How long a follow stream is read for its close after its end line (it comes at once).
_END_DRAIN_S = 1.0


class TetherClientError(Exception):
    """Base of every error this client raises on purpose."""


class ApiError(TetherClientError):
    """The manager answered with a non-2xx status; fields come from its error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        # Seconds, from a Retry-After header (429 throttling, 503 while starting).
        self.retry_after = retry_after
        super().__init__(status, code, message, field)

    def __str__(self) -> str:
        text = f"HTTP {self.status} {self.code}: {self.message}"
        return f"{text} (field: {self.field})" if self.field else text

    def __repr__(self) -> str:
        return (
            f"ApiError(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )


# Why a connection failed, for a caller that maps failures to exit statuses: ``tls`` (the
# certificate is not trusted: the CA file is wrong) and ``protocol`` (http:// against a TLS
# port or the reverse) are fixed by changing a setting; ``unreachable`` and ``timeout`` may
# pass by themselves; ``stream`` is a follow that broke too often.
ConnectionKind = Literal["tls", "protocol", "unreachable", "timeout", "stream"]


class ConnectionFailed(TetherClientError):
    """The manager could not be reached, or stopped answering."""

    def __init__(self, message: str, kind: ConnectionKind = "unreachable") -> None:
        self.message = message
        self.kind: ConnectionKind = kind
        super().__init__(message)


class InvalidResponse(TetherClientError):
    """A 2xx answer that is not what the API promises (a proxy page, a newer server...)."""


# --- follow events ----------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class LogEvent(_Event):
    kind: Literal["log"] = "log"
    line: LogEntry


class StateEvent(_Event):
    kind: Literal["state"] = "state"
    state: TaskState


class EndEvent(_Event):
    """The last event of a follow: the task in its final state."""

    kind: Literal["end"] = "end"
    task: TaskView


FollowEvent = LogEvent | StateEvent | EndEvent
_EVENT_MODELS: dict[str, type[LogEvent] | type[StateEvent] | type[EndEvent]] = {
    "log": LogEvent,
    "state": StateEvent,
    "end": EndEvent,
}


class _NoContent(BaseModel):
    """A 204: nothing to read."""

    model_config = ConfigDict(defer_build=True)


class Document(RootModel[dict[str, Any]]):
    """A JSON object the client passes through as it is: settings whose model lives on the
    server (the SSO settings), which the client may not import."""

    model_config = ConfigDict(defer_build=True)


class _DelegateList(BaseModel):
    model_config = ConfigDict(defer_build=True)
    delegates: list[DelegateView]


class _TokenList(BaseModel):
    model_config = ConfigDict(defer_build=True)
    tokens: list[TokenView]


# --- TLS ---------------------------------------------------------------------------------


def tls_client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context that speaks TLS 1.3 only, trusting ``ca_file`` when given
    (else the system's roots)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


# --- the client --------------------------------------------------------------------------


class TetherClient:
    """Async client of one manager. Use as an async context manager, or call :meth:`close`.

    ``timeout`` bounds each plain call and the connect phase of a follow. A follow has no
    total limit: it ends with the task. It reconnects when the stream breaks, resuming after
    the last line seen; ``follow_retries`` bounds how many connections in a row may fail
    without delivering a single line (the server's pings count, so a quiet task that the
    server keeps alive never uses any up). ``follow_read_timeout`` is how long a stream may
    stay silent before it is taken as broken.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        ca_file: Path | None = None,
        timeout: float = 30,
        follow_read_timeout: float | None = 90,
        follow_retries: int = 8,
        follow_backoff: float = 0.5,
        follow_backoff_max: float = 10,
    ) -> None:
        url = URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("the manager URL must be http:// or https:// with a host")
        self._base = url
        # For messages: never the userinfo of a URL someone pasted with credentials in it.
        self._display = str(url.with_user(None))
        self._headers = {
            "Accept": "application/json",
            "User-Agent": f"tether-client/{__version__}",
        }
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._ssl: ssl.SSLContext | None = None
        self._ca_file = ca_file
        if url.scheme == "https":
            try:
                self._ssl = tls_client_context(ca_file)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise TetherClientError(f"cannot load CA file {ca_file}: {reason}") from None
        self._timeout = timeout
        self._follow_read_timeout = follow_read_timeout
        self._follow_retries = follow_retries
        self._follow_backoff = follow_backoff
        self._follow_backoff_max = follow_backoff_max
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"TetherClient({self._display!r})"

    def use_credential(self, key: str) -> None:
        """Act with ``key`` from now on: a session token a login just answered."""
        self._headers["Authorization"] = f"Bearer {key}"
        if self._session is not None:
            self._session.headers["Authorization"] = f"Bearer {key}"

    @property
    def base_url(self) -> str:
        return self._display

    async def __aenter__(self) -> TetherClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- tasks ---------------------------------------------------------------------------

    async def submit_task(self, task: TaskSubmit, *, wait: float | None = None) -> TaskView:
        """Queue a task; with an idempotency key already used, the existing task comes back.
        ``wait``: the answer comes once the task is final, or after that many seconds (at
        most 60) with the task as it is then: tell the two apart by its state."""
        if wait is None:
            return await self._call("POST", "/api/v1/tasks", TaskView, body=task)
        return await self._call(
            "POST",
            "/api/v1/tasks",
            TaskView,
            params={"wait": repr(wait)},
            body=task,
            # The answer may take the whole wait: the call's own limit comes on top of it.
            timeout=wait + self._timeout,
        )

    async def get_task(self, task_id: str) -> TaskView:
        return await self._call("GET", f"/api/v1/tasks/{_seg(task_id)}", TaskView)

    async def list_tasks(
        self,
        state: TaskState | str | None = None,
        delegate: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        app: str | None = None,
        env: str | None = None,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        id_prefix: str | None = None,
    ) -> list[TaskView]:
        """Tasks newest first. ``delegate``: a delegate's id or name; ``labels``: every one
        must match; ``id_prefix``: the start of the id."""
        params: list[tuple[str, str]] = list(
            _params(
                state=state,
                delegate=delegate,
                since=since,
                until=until,
                limit=limit,
                app=app,
                env=env,
                name=name,
                id_prefix=id_prefix,
            ).items()
        )
        params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        page = await self._call("GET", "/api/v1/tasks", TaskList, params=params)
        return page.tasks

    async def list_deployments(
        self,
        app: str | None = None,
        env: str | None = None,
        service: str | None = None,
        status: TaskState | str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        """Deployment history, newest first: tasks with deployment data the caller may read."""
        params = _params(
            app=app, env=env, service=service, status=status, since=since, until=until, limit=limit
        )
        page = await self._call("GET", "/api/v1/deployments", TaskList, params=params)
        return page.tasks

    async def cancel_task(self, task_id: str) -> TaskView:
        return await self._call("POST", f"/api/v1/tasks/{_seg(task_id)}/cancel", TaskView)

    async def get_logs(self, task_id: str, after: str | None = None, limit: int = 1000) -> LogPage:
        """One page of a task's log; pass the page's ``cursor`` as ``after`` for the next."""
        params = _params(after=after, limit=limit)
        path = f"/api/v1/tasks/{_seg(task_id)}/logs"
        return await self._call("GET", path, LogPage, params=params)

    async def follow_logs(
        self, task_id: str, after: str | None = None
    ) -> AsyncGenerator[FollowEvent, None]:
        """Log lines and state changes as they happen, ending with an :class:`EndEvent`.

        A broken stream is reopened after the last line seen, so no line is lost or
        repeated; a state equal to the last one yielded (a reconnect repeats it) is dropped.
        Raises :class:`ConnectionFailed` when ``follow_retries`` connections in a row fail,
        and :class:`ApiError` at once for a 4xx other than 429 (unknown task, bad key).
        Close the iterator (``contextlib.aclosing``) when leaving it before the end.
        """
        cursor = after
        last_pos = _position(after) if after is not None else None
        last_state: TaskState | None = None
        failures = 0
        # A loop of its own, not tenacity: what is retried is a generator that yields to the
        # caller between failures, the count of failures starts again whenever a connection
        # delivered anything (tenacity counts attempts since the first), and the delay takes
        # the server's Retry-After. tenacity's AsyncRetrying would need a custom stop, wait
        # and a state reset from inside the attempt: the same logic, less plainly written.
        while True:
            delivered = False
            retry_after: float | None = None
            try:
                async with contextlib.aclosing(self._follow_lines(task_id, cursor)) as lines:
                    async for raw in lines:
                        delivered = True
                        event = _parse_event(raw)
                        if event is None:
                            continue  # a ping, or a kind from a newer server
                        if isinstance(event, LogEvent):
                            pos = (event.line.attempt, event.line.seq)
                            if last_pos is not None and pos <= last_pos:
                                continue  # resent after a reconnect
                            last_pos = pos
                            cursor = f"{pos[0]}:{pos[1]}"
                        elif isinstance(event, StateEvent):
                            if event.state == last_state:
                                continue
                            last_state = event.state
                        if isinstance(event, EndEvent):
                            await _read_to_close(lines)
                            yield event
                            return
                        yield event
                reason = "the stream closed before the task ended"
            except ApiError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                reason, retry_after = str(exc), exc.retry_after
            except ConnectionFailed as exc:
                reason = exc.message
            if delivered:
                failures = 0
            failures += 1
            if failures > self._follow_retries:
                raise ConnectionFailed(
                    f"lost the log stream of task {task_id} ({failures} failed connections "
                    f"in a row; last: {reason})",
                    "stream",
                )
            await asyncio.sleep(self._follow_delay(failures, retry_after))

    # --- delegates and tokens ------------------------------------------------------------

    async def list_delegates(self) -> list[DelegateView]:
        page = await self._call("GET", "/api/v1/delegates", _DelegateList)
        return page.delegates

    async def drain_delegate(self, name: str) -> list[DelegateView]:
        """Stop new work reaching the delegates with this name (or id); running tasks finish."""
        path = f"/api/v1/delegates/{_seg(name)}/drain"
        return (await self._call("POST", path, _DelegateList)).delegates

    async def delete_delegate(self, name: str, *, force: bool = False) -> list[DelegateView]:
        """Forget delegates that are gone (connected ones too with ``force``)."""
        path = f"/api/v1/delegates/{_seg(name)}"
        params = {"force": "true"} if force else None
        return (await self._call("DELETE", path, _DelegateList, params=params)).delegates

    async def resume_delegate(self, name: str) -> list[DelegateView]:
        path = f"/api/v1/delegates/{_seg(name)}/resume"
        return (await self._call("POST", path, _DelegateList)).delegates

    async def put_profile(self, name: str, profile: ProfilePut) -> ProfileView:
        path = f"/api/v1/profiles/{_seg(name)}"
        return await self._call("PUT", path, ProfileView, body=profile)

    async def list_profiles(self) -> list[ProfileView]:
        return (await self._call("GET", "/api/v1/profiles", ProfileList)).profiles

    async def delete_profile(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/profiles/{_seg(name)}", _NoContent)

    # -- verifications (manager.api.verifications) --

    async def put_verification(self, name: str, body: VerificationPut) -> VerificationView:
        path = f"/api/v1/verifications/{_seg(name)}"
        return await self._call("PUT", path, VerificationView, body=body)

    async def get_verification(self, name: str, version: int | None = None) -> VerificationView:
        params = {} if version is None else {"version": str(version)}
        path = f"/api/v1/verifications/{_seg(name)}"
        return await self._call("GET", path, VerificationView, params=params)

    async def list_verifications(self) -> list[VerificationView]:
        return (await self._call("GET", "/api/v1/verifications", VerificationList)).verifications

    async def delete_verification(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/verifications/{_seg(name)}", _NoContent)

    async def run_verification(self, body: VerifyRun) -> TaskView:
        return await self._call("POST", "/api/v1/verification-runs", TaskView, body=body)

    async def create_token(self, name: str, scope: TokenCreate | None = None) -> TokenCreated:
        """A delegate enrollment token; its value is in the answer and nowhere else, ever.
        ``scope``: a full request (its scope and selectors) instead of an account-wide one."""
        body = TokenCreate(name=name) if scope is None else scope.model_copy(update={"name": name})
        return await self._call("POST", "/api/v1/tokens", TokenCreated, body=body)

    async def list_tokens(self) -> list[TokenView]:
        page = await self._call("GET", "/api/v1/tokens", _TokenList)
        return page.tokens

    async def revoke_token(self, name: str) -> TokenView:
        return await self._call("DELETE", f"/api/v1/tokens/{_seg(name)}", TokenView)

    # -- secret managers and secrets (answers are metadata: no route returns a value)

    async def list_secret_managers(self) -> list[SecretManagerView]:
        path = "/api/v1/secret-managers"
        return (await self._call("GET", path, SecretManagerList)).secret_managers

    async def create_secret_manager(self, body: SecretManagerCreate) -> SecretManagerView:
        return await self._call("POST", "/api/v1/secret-managers", SecretManagerView, body=body)

    async def get_secret_manager(self, name: str) -> SecretManagerView:
        path = f"/api/v1/secret-managers/{_seg(name)}"
        return await self._call("GET", path, SecretManagerView)

    async def update_secret_manager(
        self, name: str, body: SecretManagerUpdate
    ) -> SecretManagerView:
        path = f"/api/v1/secret-managers/{_seg(name)}"
        return await self._call("PATCH", path, SecretManagerView, body=body)

    async def delete_secret_manager(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/secret-managers/{_seg(name)}", _NoContent)

    async def test_secret_manager(self, name: str) -> SecretManagerTestResult:
        """Runs on a delegate: it may take as long as a KMS round trip and a dispatch."""
        path = f"/api/v1/secret-managers/{_seg(name)}/test"
        return await self._call("POST", path, SecretManagerTestResult, timeout=SLOW_CALL_S)

    async def list_secrets(self, manager: str | None = None) -> list[SecretView]:
        params = _params(manager=manager)
        return (await self._call("GET", "/api/v1/secrets", SecretList, params=params)).secrets

    async def create_secret(self, body: SecretCreate) -> SecretView:
        return await self._call(
            "POST", "/api/v1/secrets", SecretView, body=body, timeout=SLOW_CALL_S
        )

    async def set_secret_scope(self, name: str, scope: ScopeSpec | None) -> SecretView:
        """Where a secret may be used; None: its manager's scope."""
        body = ScopePut(scope=scope)
        return await self._call("PUT", f"/api/v1/secrets/{_seg(name)}/scope", SecretView, body=body)

    async def set_secret_manager_scope(
        self, name: str, scope: ScopeSpec | None
    ) -> SecretManagerView:
        """Where a manager's secrets may be used; None: unrestricted."""
        body = ScopePut(scope=scope)
        path = f"/api/v1/secret-managers/{_seg(name)}/scope"
        return await self._call("PUT", path, SecretManagerView, body=body)

    async def get_secret(self, name: str) -> SecretView:
        return await self._call("GET", f"/api/v1/secrets/{_seg(name)}", SecretView)

    async def update_secret(self, name: str, body: SecretUpdate) -> SecretView:
        path = f"/api/v1/secrets/{_seg(name)}"
        return await self._call("PATCH", path, SecretView, body=body, timeout=SLOW_CALL_S)

    async def delete_secret(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/secrets/{_seg(name)}", _NoContent)

    async def secret_versions(self, name: str) -> SecretVersionList:
        return await self._call("GET", f"/api/v1/secrets/{_seg(name)}/versions", SecretVersionList)

    async def migrate_secret(self, name: str, to: str) -> SecretView:
        path = f"/api/v1/secrets/{_seg(name)}/migrate"
        body = SecretMigrate(to=to)
        return await self._call("POST", path, SecretView, body=body, timeout=SLOW_CALL_S)

    async def get_retention(self) -> RetentionSettings:
        return await self._call("GET", "/api/v1/retention", RetentionSettings)

    async def put_retention(self, settings: RetentionSettings) -> RetentionSettings:
        return await self._call("PUT", "/api/v1/retention", RetentionSettings, body=settings)

    async def health(self) -> bool:
        """Whether ``/healthz`` answers 2xx; False when it answers otherwise or not at all."""
        try:
            async with self._get_session().get(
                self._url("/healthz"),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- freeze windows, incoming webhooks, incidents (issue 18) --------------------------

    async def create_freeze(self, body: FreezeCreate) -> FreezeView:
        return await self._call("POST", "/api/v1/freezes", FreezeView, body=body)

    async def list_freezes(self) -> list[FreezeView]:
        return (await self._call("GET", "/api/v1/freezes", FreezeList)).freezes

    async def delete_freeze(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/freezes/{_seg(name)}", _NoContent)

    async def create_webhook(self, body: WebhookCreate) -> WebhookCreated:
        """The webhook and its secret: in the answer and nowhere else, ever."""
        return await self._call("POST", "/api/v1/webhooks", WebhookCreated, body=body)

    async def list_webhooks(self) -> list[WebhookView]:
        return (await self._call("GET", "/api/v1/webhooks", WebhookList)).webhooks

    async def get_webhook(self, name: str) -> WebhookView:
        return await self._call("GET", f"/api/v1/webhooks/{_seg(name)}", WebhookView)

    async def delete_webhook(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/webhooks/{_seg(name)}", _NoContent)

    async def rotate_webhook_secret(self, name: str) -> WebhookCreated:
        path = f"/api/v1/webhooks/{_seg(name)}/rotate-secret"
        return await self._call("POST", path, WebhookCreated)

    async def list_incidents(self, status: str | None = None) -> list[IncidentSummary]:
        params = {} if status is None else {"status": status}
        page = await self._call("GET", "/api/v1/incidents", IncidentList, params=params)
        return page.incidents

    async def get_incident(self, incident_id: str) -> IncidentView:
        return await self._call("GET", f"/api/v1/incidents/{_seg(incident_id)}", IncidentView)

    async def change_incident(
        self, incident_id: str, action: str, note: str | None = None
    ) -> IncidentView:
        """``action``: ack, resolve, or notes (with ``note``)."""
        path = f"/api/v1/incidents/{_seg(incident_id)}/{action}"
        body = None if note is None else IncidentNote(text=note)
        return await self._call("POST", path, IncidentView, body=body)

    async def incident_retention(self, days: int | None = None) -> IncidentRetention:
        path = "/api/v1/incident-retention"
        if days is None:
            return await self._call("GET", path, IncidentRetention)
        return await self._call("PUT", path, IncidentRetention, body=IncidentRetention(days=days))

    # --- plumbing ------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop, as aiohttp wants.
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, trust_env=False
            )
        return self._session

    def _url(self, path: str) -> str:
        return f"{self._base}{path}"

    # -- runbooks, their runs, governance standards (manager/api/runbooks.py) -------------

    async def put_runbook(self, definition: RunbookDefinition) -> RunbookView:
        path = f"/api/v1/runbooks/{_seg(definition.name)}"
        return await self._call("PUT", path, RunbookView, body=definition)

    async def list_runbooks(self) -> list[RunbookView]:
        return (await self._call("GET", "/api/v1/runbooks", RunbookList)).runbooks

    async def get_runbook(self, name: str, version: int | None = None) -> RunbookView:
        params = None if version is None else {"version": str(version)}
        return await self._call("GET", f"/api/v1/runbooks/{_seg(name)}", RunbookView, params=params)

    async def delete_runbook(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/runbooks/{_seg(name)}", _NoContent)

    async def start_runbook_run(self, name: str, start: RunStart) -> RunView:
        path = f"/api/v1/runbooks/{_seg(name)}/runs"
        return await self._call("POST", path, RunView, body=start)

    async def list_runbook_runs(self, runbook: str | None = None) -> list[RunView]:
        params = None if runbook is None else {"runbook": runbook}
        return (await self._call("GET", "/api/v1/runbook-runs", RunList, params=params)).runs

    async def get_runbook_run(self, run_id: str) -> RunView:
        return await self._call("GET", f"/api/v1/runbook-runs/{_seg(run_id)}", RunView)

    async def decide_runbook_run(
        self, run_id: str, decision: ApprovalDecision, *, approve: bool
    ) -> RunView:
        verb = "approve" if approve else "reject"
        path = f"/api/v1/runbook-runs/{_seg(run_id)}/{verb}"
        return await self._call("POST", path, RunView, body=decision)

    async def cancel_runbook_run(self, run_id: str) -> RunView:
        return await self._call("POST", f"/api/v1/runbook-runs/{_seg(run_id)}/cancel", RunView)

    async def put_standard(self, definition: StandardDefinition) -> StandardView:
        path = f"/api/v1/standards/{_seg(definition.name)}"
        return await self._call("PUT", path, StandardView, body=definition)

    async def list_standards(self) -> list[StandardView]:
        return (await self._call("GET", "/api/v1/standards", StandardList)).standards

    async def get_standard(self, name: str) -> StandardView:
        return await self._call("GET", f"/api/v1/standards/{_seg(name)}", StandardView)

    async def delete_standard(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/standards/{_seg(name)}", _NoContent)

    async def _call(
        self,
        method: str,
        path: str,
        model: type[_M],
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: BaseModel | None = None,
        timeout: float | None = None,
    ) -> _M:
        timeout = timeout or self._timeout
        data: str | None = None
        headers: dict[str, str] = {}
        if body is not None:
            data = body.model_dump_json()
            headers["Content-Type"] = "application/json"
        try:
            async with self._get_session().request(
                method,
                self._url(path),
                params=params,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                if not 200 <= resp.status < 300:
                    raise _api_error(resp, raw)
        except aiohttp.ClientError as exc:
            raise self._failed(exc) from exc
        except TimeoutError:
            raise ConnectionFailed(
                f"{method} {path} on {self._display}: no answer within {timeout:g}s", "timeout"
            ) from None
        if not raw and model is _NoContent:
            return model()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidResponse(
                f"unexpected answer to {method} {path}: {_first_error(exc)}"
            ) from None

    async def _follow_lines(self, task_id: str, after: str | None) -> AsyncGenerator[bytes, None]:
        """The raw NDJSON lines of one follow connection, until it ends or breaks."""
        path = f"/api/v1/tasks/{_seg(task_id)}/logs/follow"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._follow_read_timeout
        )
        try:
            async with self._get_session().get(
                self._url(path),
                params=_params(after=after),
                headers={"Accept": "application/x-ndjson"},
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                if not 200 <= resp.status < 300:
                    raise _api_error(resp, await resp.read())
                buf = bytearray()
                async for chunk in resp.content.iter_any():
                    start = len(buf)
                    buf += chunk
                    while (end := buf.find(b"\n", start)) >= 0:
                        line = bytes(buf[:end]).strip()
                        del buf[: end + 1]
                        start = 0
                        if line:
                            yield line
                    if len(buf) > _MAX_FOLLOW_LINE:
                        raise InvalidResponse(f"a follow line of task {task_id} is too long")
                # A partial line left in buf was cut by the break; it comes again after
                # the reconnect.
        except aiohttp.ClientError as exc:
            raise self._failed(exc) from exc
        except TimeoutError:
            raise ConnectionFailed(
                f"timed out (connect limit {self._timeout:g}s, "
                f"silence limit {self._follow_read_timeout}s)",
                "timeout",
            ) from None

    def _failed(self, exc: aiohttp.ClientError) -> ConnectionFailed:
        """One line naming the URL and the CA in use, and what to check, for ``exc``."""
        where = self._display
        ca = f"CA file {self._ca_file}" if self._ca_file is not None else "the system's CAs"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
            return ConnectionFailed(
                f"the TLS certificate of {where} is not trusted by {ca} ({reason})",
                "tls",
            )
        if isinstance(exc, aiohttp.ClientSSLError):
            return ConnectionFailed(
                f"TLS with {where} failed ({_ssl_reason(exc)}; trusting {ca}): "
                "does it serve plain http?",
                "protocol",
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError) and self._base.scheme == "http":
            return ConnectionFailed(
                f"{where} closed the connection without answering: it probably serves "
                "https; use https://",
                "protocol",
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            err = exc.os_error
            reason = (
                "connection refused"
                if isinstance(err, ConnectionRefusedError)
                else err.strerror or str(err) or type(err).__name__
            )
            return ConnectionFailed(
                f"cannot connect to {where} ({reason})",
                "unreachable",
            )
        return ConnectionFailed(f"{where}: {_describe(exc)}", "unreachable")

    def _follow_delay(self, failures: int, retry_after: float | None) -> float:
        ceiling = min(
            self._follow_backoff_max, self._follow_backoff * float(2 ** min(failures - 1, 30))
        )
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        return delay

    # --- audit trail ---------------------------------------------------------------------

    async def list_audit(
        self,
        query: AuditQueryModel | None = None,
        *,
        before: str | None = None,
        saved_filter: str | None = None,
    ) -> AuditList:
        """A page of events, newest first; pass the page's ``next`` as ``before`` for the
        one after. ``saved_filter`` names a saved filter, which ``query`` narrows."""
        params = _params(**_query_params(query), before=before, filter=saved_filter)
        return await self._call("GET", "/api/v1/audit", AuditList, params=params)

    async def export_audit(
        self,
        fmt: Literal["jsonl", "csv"] = "jsonl",
        query: AuditQueryModel | None = None,
        *,
        saved_filter: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The matching events, oldest first, as chunks of JSON Lines or CSV. No total time
        limit: a long trail takes as long as it takes; a silent connection does not."""
        params = _params(**_query_params(query), format=fmt, filter=saved_filter)
        params.pop("limit", None)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._timeout, sock_read=self._timeout
        )
        path = "/api/v1/audit/export"
        try:
            async with self._get_session().get(
                self._url(path), params=params, allow_redirects=False, timeout=timeout
            ) as resp:
                if not 200 <= resp.status < 300:
                    raise _api_error(resp, await resp.read())
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    yield chunk
        except aiohttp.ClientError as exc:
            raise self._failed(exc) from exc
        except TimeoutError:
            raise ConnectionFailed(
                f"GET {path} on {self._display}: silent for {self._timeout:g}s"
            ) from None

    async def verify_audit(self) -> AuditVerifyReport:
        """Check the hash chain on the manager; ``broken`` names the first bad link."""
        return await self._call(
            "GET", "/api/v1/audit/verify", AuditVerifyReport, timeout=SLOW_CALL_S
        )

    async def list_audit_filters(self) -> list[AuditFilterView]:
        return (await self._call("GET", "/api/v1/audit/filters", AuditFilterList)).filters

    async def save_audit_filter(self, name: str, query: AuditQueryModel) -> AuditFilterView:
        body = AuditFilterCreate(name=name, query=query)
        return await self._call("POST", "/api/v1/audit/filters", AuditFilterView, body=body)

    async def delete_audit_filter(self, name: str) -> None:
        await self._call("DELETE", f"/api/v1/audit/filters/{_seg(name)}", _NoContent)

    # --- API keys and the IP allowlist ---------------------------------------------------

    async def create_api_key(self, body: ApiKeyCreate) -> ApiKeyCreated:
        """A new API key; its value is in the answer and nowhere else, ever."""
        return await self._call("POST", "/api/v1/api-keys", ApiKeyCreated, body=body)

    async def list_api_keys(self) -> list[ApiKeyView]:
        return (await self._call("GET", "/api/v1/api-keys", ApiKeyList)).api_keys

    async def revoke_api_key(self, name: str) -> ApiKeyView:
        return await self._call("DELETE", f"/api/v1/api-keys/{_seg(name)}", ApiKeyView)

    # -- users, groups, applications, environments ---------------------------------------

    async def create_user(self, body: UserCreate) -> UserCreated:
        """Invite a user; the invite token is in the answer and nowhere else."""
        return await self._call("POST", "/api/v1/users", UserCreated, body=body)

    async def list_users(self, group: str | None = None) -> list[UserView]:
        params = _params(group=group)
        return (await self._call("GET", "/api/v1/users", UserList, params=params)).users

    async def set_user_enabled(self, user: str, enabled: bool) -> UserView:
        return await self.user_action(user, "enable" if enabled else "disable")

    async def user_action(
        self, user: str, action: Literal["enable", "disable", "unlock", "reset-2fa", "logout"]
    ) -> UserView:
        return await self._call("POST", f"/api/v1/users/{_seg(user)}/{action}", UserView)

    async def reinvite_user(self, user: str) -> UserCreated:
        return await self._call("POST", f"/api/v1/users/{_seg(user)}/invite", UserCreated)

    async def create_group(self, body: GroupCreate) -> GroupView:
        return await self._call("POST", "/api/v1/groups", GroupView, body=body)

    async def list_groups(self) -> list[GroupView]:
        return (await self._call("GET", "/api/v1/groups", GroupList)).groups

    async def update_group(self, name: str, body: GroupUpdate) -> GroupView:
        return await self._call("PATCH", f"/api/v1/groups/{_seg(name)}", GroupView, body=body)

    async def create_app(self, body: AppCreate) -> AppView:
        return await self._call("POST", "/api/v1/apps", AppView, body=body)

    async def list_apps(self) -> list[AppView]:
        return (await self._call("GET", "/api/v1/apps", AppList)).apps

    async def create_env(self, app: str, body: EnvCreate) -> EnvView:
        path = f"/api/v1/apps/{_seg(app)}/envs"
        return await self._call("POST", path, EnvView, body=body)

    async def update_env(self, app: str, env: str, body: EnvUpdate) -> EnvView:
        path = f"/api/v1/apps/{_seg(app)}/envs/{_seg(env)}"
        return await self._call("PATCH", path, EnvView, body=body)

    # -- removals and single reads (`tether app|env|group delete`, `group get`, `user get`)

    async def delete_app(self, app: str) -> None:
        await self._call("DELETE", f"/api/v1/apps/{_seg(app)}", _NoContent)

    async def delete_env(self, app: str, env: str) -> None:
        await self._call("DELETE", f"/api/v1/apps/{_seg(app)}/envs/{_seg(env)}", _NoContent)

    async def delete_group(self, name: str, *, force: bool = False) -> None:
        params = {"force": "true"} if force else None
        await self._call("DELETE", f"/api/v1/groups/{_seg(name)}", _NoContent, params=params)

    async def get_group(self, name: str) -> GroupView:
        return await self._call("GET", f"/api/v1/groups/{_seg(name)}", GroupView)

    async def get_user(self, user: str) -> UserView:
        return await self._call("GET", f"/api/v1/users/{_seg(user)}", UserView)

    async def update_user(self, user: str, body: UserUpdate) -> UserView:
        return await self._call("PATCH", f"/api/v1/users/{_seg(user)}", UserView, body=body)

    async def sso_settings(self) -> dict[str, Any]:
        """The SSO settings (the client secret is a secret's name, never its value)."""
        return (await self._call("GET", "/api/v1/auth/sso", Document)).root

    async def set_sso_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        body = Document(settings)
        return (await self._call("PUT", "/api/v1/auth/sso", Document, body=body)).root

    async def list_envs(self, app: str) -> list[EnvView]:
        return (await self._call("GET", f"/api/v1/apps/{_seg(app)}/envs", EnvList)).envs

    # -- logging in (these take no API key; the session token is in the answer) ----------

    async def login(self, body: LoginRequest) -> LoginResult:
        return await self._call("POST", "/api/v1/auth/login", LoginResult, body=body)

    async def accept_invite(self, body: InviteAccept) -> LoginResult:
        return await self._call("POST", "/api/v1/auth/invite/accept", LoginResult, body=body)

    async def sso_start(self, body: SsoStart) -> SsoStarted:
        return await self._call("POST", "/api/v1/auth/sso/start", SsoStarted, body=body)

    async def sso_link_start(self, body: SsoLinkStart) -> SsoStarted:
        """Begin linking the session's user to their identity at the SSO provider."""
        return await self._call("POST", "/api/v1/auth/sso/link", SsoStarted, body=body)

    async def sso_poll(self, body: SsoPoll) -> SsoSession:
        return await self._call("POST", "/api/v1/auth/sso/poll", SsoSession, body=body)

    async def me(self) -> Me:
        return await self._call("GET", "/api/v1/auth/me", Me)

    async def change_password(self, body: PasswordChange) -> LoginResult:
        return await self._call("POST", "/api/v1/auth/password", LoginResult, body=body)

    async def totp_enrol(self, password: str | None = None) -> TotpEnrolment:
        body = TotpEnrolStart(password=password)
        return await self._call("POST", "/api/v1/auth/totp/enrol", TotpEnrolment, body=body)

    async def totp_confirm(self, body: TotpConfirm) -> TotpConfirmed:
        return await self._call("POST", "/api/v1/auth/totp/confirm", TotpConfirmed, body=body)

    async def totp_verify(self, body: SecondFactor) -> LoginResult:
        return await self._call("POST", "/api/v1/auth/totp/verify", LoginResult, body=body)

    async def sso_link(self, user: str, body: SsoLinkRequest) -> SsoLinkView:
        path = f"/api/v1/users/{_seg(user)}/sso-link"
        return await self._call("PUT", path, SsoLinkView, body=body)

    async def sso_unlink(self, user: str) -> SsoUnlinked:
        path = f"/api/v1/users/{_seg(user)}/sso-link"
        return await self._call("DELETE", path, SsoUnlinked)

    async def logout(self) -> None:
        await self._call("POST", "/api/v1/auth/logout", LoggedOut)

    async def auth_settings(self) -> AuthSettings:
        return await self._call("GET", "/api/v1/auth/settings", AuthSettings)

    async def set_auth_settings(self, body: AuthSettings) -> AuthSettings:
        return await self._call("PUT", "/api/v1/auth/settings", AuthSettings, body=body)

    # -- directory sign-in (LDAP, SAML, SCIM): manager.schemas.directory_auth

    async def ldap_settings(self) -> LdapSettings:
        return await self._call("GET", "/api/v1/auth/ldap", LdapSettings)

    async def set_ldap_settings(self, body: LdapSettings) -> LdapSettings:
        return await self._call("PUT", "/api/v1/auth/ldap", LdapSettings, body=body)

    async def delete_ldap_settings(self) -> SettingsDeleted:
        return await self._call("DELETE", "/api/v1/auth/ldap", SettingsDeleted)

    async def ldap_login(self, body: LdapLogin) -> LoginResult:
        return await self._call("POST", "/api/v1/auth/ldap/login", LoginResult, body=body)

    async def saml_settings(self) -> SamlSettings:
        return await self._call("GET", "/api/v1/auth/saml", SamlSettings)

    async def set_saml_settings(self, body: SamlSettings) -> SamlSettings:
        return await self._call("PUT", "/api/v1/auth/saml", SamlSettings, body=body)

    async def delete_saml_settings(self) -> SettingsDeleted:
        return await self._call("DELETE", "/api/v1/auth/saml", SettingsDeleted)

    async def saml_start(self, body: SsoStart) -> SsoStarted:
        return await self._call("POST", "/api/v1/auth/saml/start", SsoStarted, body=body)

    async def create_scim_token(self, body: ScimTokenCreate) -> ScimTokenCreated:
        return await self._call("POST", "/api/v1/scim/tokens", ScimTokenCreated, body=body)

    async def list_scim_tokens(self) -> ScimTokenList:
        return await self._call("GET", "/api/v1/scim/tokens", ScimTokenList)

    async def revoke_scim_token(self, name: str) -> ScimTokenRevoked:
        path = f"/api/v1/scim/tokens/{_seg(name)}"
        return await self._call("DELETE", path, ScimTokenRevoked)

    async def get_api_key_defaults(self) -> ApiKeyDefaults:
        return await self._call("GET", "/api/v1/api-key-defaults", ApiKeyDefaults)

    async def set_api_key_defaults(self, body: ApiKeyDefaultsUpdate) -> ApiKeyDefaults:
        return await self._call("PUT", "/api/v1/api-key-defaults", ApiKeyDefaults, body=body)

    async def get_allowlist(self) -> AllowlistView:
        return await self._call("GET", "/api/v1/allowlist", AllowlistView)

    async def add_allowlist_entry(self, body: AllowlistEntryCreate) -> AllowlistEntryView:
        return await self._call("POST", "/api/v1/allowlist/entries", AllowlistEntryView, body=body)

    async def remove_allowlist_entry(
        self, entry_id: str, *, confirm: bool = False
    ) -> AllowlistEntryView:
        """``confirm``: even when it leaves the caller's own address out."""
        path = f"/api/v1/allowlist/entries/{_seg(entry_id)}"
        params = {"confirm": "true"} if confirm else None
        return await self._call("DELETE", path, AllowlistEntryView, params=params)

    async def set_allowlist_entry_enabled(
        self, entry_id: str, enabled: bool, *, confirm: bool = False
    ) -> AllowlistEntryView:
        action = "enable" if enabled else "disable"
        path = f"/api/v1/allowlist/entries/{_seg(entry_id)}/{action}"
        body = Confirm(confirm=confirm)
        return await self._call("POST", path, AllowlistEntryView, body=body)

    async def enable_allowlist(self, *, confirm: bool = False) -> AllowlistView:
        """Refused (409, ``would_lock_out``) when it would refuse the caller's own address,
        unless ``confirm``."""
        body = Confirm(confirm=confirm)
        return await self._call("POST", "/api/v1/allowlist/enable", AllowlistView, body=body)

    async def disable_allowlist(self) -> AllowlistView:
        body = Confirm()
        return await self._call("POST", "/api/v1/allowlist/disable", AllowlistView, body=body)

    async def get_trusted_proxies(self) -> list[str]:
        path = "/api/v1/allowlist/trusted-proxies"
        return (await self._call("GET", path, TrustedProxies)).proxies

    async def set_trusted_proxies(self, proxies: list[str], *, confirm: bool = False) -> list[str]:
        path = "/api/v1/allowlist/trusted-proxies"
        body = TrustedProxiesPut(proxies=proxies, confirm=confirm)
        return (await self._call("PUT", path, TrustedProxies, body=body)).proxies


# --- helpers -----------------------------------------------------------------------------


def _seg(value: str) -> str:
    """One path segment: an id can never reach another route (``../``, ``?``, ``/``)."""
    return quote(value, safe="")


def _params(**values: Any) -> dict[str, str]:
    return {name: str(value) for name, value in values.items() if value is not None}


def _query_params(query: AuditQueryModel | None) -> dict[str, Any]:
    return {} if query is None else query.model_dump(exclude_none=True)


def _position(cursor: str) -> tuple[int, int] | None:
    """``"attempt:seq"`` as a tuple; None for a cursor of another shape (they are opaque)."""
    attempt, sep, seq = cursor.partition(":")
    if sep and attempt.isdigit() and seq.isdigit():
        return int(attempt), int(seq)
    return None


def _parse_event(raw: bytes) -> FollowEvent | None:
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidResponse("a follow line is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidResponse("a follow line is not a JSON object")
    model = _EVENT_MODELS.get(str(data.get("kind")))
    if model is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidResponse(f"bad {data['kind']} line: {_first_error(exc)}") from None


def _api_error(resp: aiohttp.ClientResponse, raw: bytes) -> ApiError:
    retry_after: float | None = None
    header = resp.headers.get("Retry-After")
    if header is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None  # an HTTP date: rare enough to ignore
    try:
        detail = json.loads(raw)["error"]
        code, message, field = detail["code"], detail["message"], detail.get("field")
        if isinstance(code, str) and isinstance(message, str):
            return ApiError(
                resp.status,
                code,
                message,
                field if isinstance(field, str) else None,
                retry_after=retry_after,
            )
    except (ValueError, KeyError, TypeError):
        pass
    # Not our error body: a proxy or load balancer answered. Its page is not a message.
    message = resp.reason or "no reason given"
    text = raw.decode("utf-8", "replace").strip()
    if resp.content_type == "text/plain" and text and len(text) <= 200 and "\n" not in text:
        message = f"{message}: {text}"
    return ApiError(resp.status, f"http_{resp.status}", message, None, retry_after=retry_after)


def _describe(exc: aiohttp.ClientError) -> str:
    return str(exc) or type(exc).__name__


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    """OpenSSL's short reason (``wrong version number``), not the whole exception text."""
    err = exc.os_error
    reason = getattr(err, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else (str(err) or "handshake failed")


def _first_error(exc: ValidationError) -> str:
    # Location and message only: pydantic's default text echoes the input.
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(body)"
    return f"{loc}: {err['msg']}"


async def _read_to_close(lines: AsyncGenerator[bytes, None]) -> None:
    """Read a follow stream to its close once its end line came (the server closes it right
    after): a response left unread closes its connection, and the client's next call would
    pay a new one, TLS handshake included. A stream that does not close soon, or breaks,
    changes nothing: the task's end is already known."""
    with contextlib.suppress(TimeoutError, ConnectionFailed, InvalidResponse):
        async with asyncio.timeout(_END_DRAIN_S):
            async for _ in lines:
                pass
