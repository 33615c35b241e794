"""Delegate protocol v2: the messages that cross the wire between manager and delegate.

Every model forbids unknown fields, so a typo or a message from a newer peer is an error
at the edge rather than a silently ignored value. Frames on the WebSocket are JSON objects
with a ``type``; :func:`parse_delegate_frame` and :func:`parse_manager_frame` turn raw text
into one of them or raise :class:`ProtocolError`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.limits import MAX_FRAME_BYTES, MAX_LOG_BATCH_LINES, MAX_SCRIPT_BYTES
from shared.logbytes import from_base64, is_text, to_base64
from shared.secretspec import SecretDelivery, SecretOpPayload
from shared.verify.spec import VerifySpec

__all__ = [
    "FINAL_STATES",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "AcquireResponse",
    "CapabilityPayload",
    "CloseCode",
    "DelegateFrame",
    "DelegateFrameType",
    "Deployment",
    "ErrorBody",
    "ErrorDetail",
    "Heartbeat",
    "HeartbeatAck",
    "Hello",
    "HttpPayload",
    "Isolation",
    "LogBatch",
    "LogBatchAck",
    "LogLine",
    "ManagerFrame",
    "ManagerFrameType",
    "ProtocolError",
    "RegisterRequest",
    "RegisterResponse",
    "ResultAck",
    "ShellPayload",
    "StreamLogs",
    "StreamReply",
    "StreamResult",
    "TaskAck",
    "TaskAssigned",
    "TaskCancel",
    "TaskDecline",
    "TaskDrain",
    "TaskPayload",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "TaskType",
    "UserPayload",
    "VerifyPayload",
    "VerifyWindow",
    "describe_validation_error",
    "parse_delegate_frame",
    "parse_manager_frame",
]

# 2: one assignment per task pushed over the stream (TaskAssigned, acked or declined), log
# batches and results over the stream too; v1 (hints, then an HTTPS acquire) is refused at
# register with 426, which a v1 delegate reports as "upgrade the delegate".
PROTOCOL_VERSION = 2
SUPPORTED_PROTOCOL_VERSIONS: tuple[int, ...] = (2,)


class ProtocolError(ValueError):
    """A message that does not parse, or does not fit the protocol."""


class Strict(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class CloseCode(enum.IntEnum):
    """Application close codes on the stream; each tells the delegate what to do next."""

    RESTART = 4000  # the manager is going away; reconnect soon
    REVOKED = 4001  # the delegate's token was revoked: stop, this is fatal
    SUPERSEDED = 4002  # a newer connection of the same delegate took over
    UNSUPPORTED_VERSION = 4003  # this delegate speaks a protocol the manager no longer does
    BAD_FRAME = 4004  # a frame did not parse; reconnecting is fine, resending it is not
    LOST = 4005  # the manager stopped hearing heartbeats and dropped the session
    SESSION_EXPIRED = 4006  # the session credential ran out: register again with the token


class TaskType(enum.StrEnum):
    SHELL = "shell"
    HTTP = "http"
    CAPABILITY = "capability"
    # Judges a deployment from the customer's monitoring (shared.verify); a delegate from
    # before it does not advertise it, so it is never handed one.
    VERIFY = "verify"
    # Internal: a secret manager's connection test or a key wrap (shared.secretspec).
    SECRET_OP = "secret_op"  # noqa: S105 - a task type, not a password


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"


FINAL_STATES = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.TIMED_OUT,
        TaskState.EXPIRED,
    }
)

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]


class ShellPayload(Strict):
    type: Literal["shell"] = "shell"
    script: str = Field(max_length=MAX_SCRIPT_BYTES)
    interpreter: Literal["bash", "sh"] = "bash"
    env: dict[EnvName, str] = Field(default_factory=dict)
    # Relative to the task's own temporary directory; absolute paths must already exist.
    working_dir: str | None = None
    # ssh_key and winrm secrets the script gets as env variables and files (docs/secrets.md).
    credential_secrets: list[str] = Field(default_factory=list, max_length=32)


class HttpPayload(Strict):
    type: Literal["http"] = "http"
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = Field(default=None, max_length=MAX_SCRIPT_BYTES)
    # Statuses that count as success; empty means any 2xx.
    expect_status: list[int] = Field(default_factory=list)
    # Redirects followed: none, only to the URL's own origin (scheme, host, port), or any.
    # Crossing to another origin drops the credential headers (delegate/run/redirects.py).
    follow_redirects: Literal["none", "same_origin", "any"] = "same_origin"


class CapabilityPayload(Strict):
    """Can this delegate reach ``host:port`` (TCP) or an ``https://`` URL (TLS handshake)?"""

    type: Literal["capability"] = "capability"
    target: str = Field(min_length=1, max_length=2048)


class VerifyWindow(Strict):
    """Absolute times (Unix seconds), computed by the manager from the deployment's record."""

    baseline_start: float
    baseline_end: float
    analysis_start: float
    analysis_end: float

    @model_validator(mode="after")
    def _ordered(self) -> VerifyWindow:
        if not (
            self.baseline_start < self.baseline_end and self.analysis_start < self.analysis_end
        ):
            raise ValueError("each window must start before it ends")
        return self


class VerifyPayload(Strict):
    """Query the provider for both windows, once the analysis window has ended, and judge."""

    type: Literal["verify"] = "verify"
    spec: VerifySpec
    window: VerifyWindow
    # Credential role (bearer_token, basic_password, tls_cert, tls_key, tls_ca) -> a secret
    # expression, rendered on the delegate (shared.task_secrets) like an http task's header.
    credentials: dict[
        Literal["bearer_token", "basic_password", "tls_cert", "tls_key", "tls_ca"], str
    ] = Field(default_factory=dict)


# What users may submit; a delegate may also be handed the manager's own secret operations.
UserPayload = Annotated[
    ShellPayload | HttpPayload | CapabilityPayload | VerifyPayload, Field(discriminator="type")
]
TaskPayload = Annotated[
    ShellPayload | HttpPayload | CapabilityPayload | VerifyPayload | SecretOpPayload,
    Field(discriminator="type"),
]


class Deployment(Strict):
    """The deployment a task performs; reported back with the outcome and kept as a record."""

    service: str = Field(min_length=1, max_length=256)
    environment: str = Field(min_length=1, max_length=256)
    artifact: str | None = Field(default=None, max_length=1024)
    version: str | None = Field(default=None, max_length=256)


class TaskSpec(Strict):
    """What a delegate receives when it wins a task."""

    id: str
    payload: TaskPayload
    timeout_s: float = Field(gt=0)
    deployment: Deployment | None = None


# --- enrollment -------------------------------------------------------------------------


# How a delegate runs tasks: each as a task user of its own slot, never the delegate's user
# ("task_users"); or as the delegate's own user, an explicit opt-in of a delegate that cannot
# switch users ("shared_user"): a task can then read the delegate's token and key.
Isolation = Literal["task_users", "shared_user"]


class RegisterRequest(Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    hostname: str = Field(max_length=255)
    version: str = Field(max_length=64)
    protocol_version: int
    selectors: list[str] = Field(default_factory=list, max_length=64)
    capacity: int = Field(ge=1, le=1000)
    task_types: list[TaskType]
    # X25519 public key, raw 32 bytes in base64: secrets are sealed to it at acquire.
    public_key: str = Field(min_length=40, max_length=64)
    # New at every process start (a re-registration after a session expiry keeps it): the
    # manager runs the delegate's profile scripts once per instance.
    instance: str = Field(default="", max_length=64)
    # A delegate that does not say ran its tasks as itself.
    isolation: Isolation = "shared_user"


class RegisterResponse(Strict):
    delegate_id: str
    session_token: str
    session_expires_in_s: float
    heartbeat_interval_s: float
    lost_after_s: float
    poll_wait_s: float
    stream_retry_s: float
    protocol_version: int


# --- stream frames ----------------------------------------------------------------------


# A task id as a delegate lists it: bounded, so a listing cannot carry megabytes.
ListedTaskId = Annotated[str, Field(max_length=64)]


class Hello(Strict):
    type: Literal["hello"] = "hello"
    # Names this delegate process (a fresh random value per process, kept across
    # reconnects): an assignment pushed to the same key is the same attempt again, one
    # pushed to another key (a restarted process) never reached it.
    key: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    running: list[ListedTaskId] = Field(default_factory=list, max_length=1000)
    # Tasks whose result or log lines wait in the delegate's spool (see Heartbeat).
    spooled: list[ListedTaskId] = Field(default_factory=list, max_length=1000)


MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class Heartbeat(Strict):
    type: Literal["heartbeat"] = "heartbeat"
    seq: int = Field(ge=0)
    running: list[ListedTaskId] = Field(default_factory=list, max_length=1000)
    # Tasks no longer running here whose result or log lines wait in the spool, not yet
    # taken by the manager: their leases are renewed like a running task's, so what a
    # manager outage held back is still taken when it is back. Never answered with a
    # cancel. Sent only when not empty, so a manager from before it reads the frame.
    spooled: list[ListedTaskId] = Field(default_factory=list, max_length=1000)
    free_slots: int = Field(ge=0)
    load: float = Field(default=0.0, ge=0)
    # The delegate opens no port to be scraped: it reports its own figures here, and the
    # manager republishes them per delegate on /metrics.
    metrics: dict[MetricName, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict, max_length=64
    )


class HeartbeatAck(Strict):
    type: Literal["heartbeat_ack"] = "heartbeat_ack"
    seq: int
    # Running tasks the manager wants stopped: repeated on every ack until they end, so a
    # lost cancel frame (or a delegate that is polling) still gets the word.
    cancel: list[str] = Field(default_factory=list)
    drain: bool = False


class TaskCancel(Strict):
    type: Literal["cancel"] = "cancel"
    task_id: str


class TaskDrain(Strict):
    type: Literal["drain"] = "drain"


def describe_validation_error(exc: ValidationError) -> tuple[str | None, str]:
    """The first error as (field path, message), never quoting the input.

    pydantic's own messages for most errors name only what was expected, but a bad union
    tag is quoted back, and a peer's bad input may be a secret pasted in the wrong place.
    """
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        field = str(ctx.get("discriminator", "type")).strip("'")
        path = ".".join([*loc, field])
        expected = ctx.get("expected_tags")
        what = "unknown" if kind == "union_tag_invalid" else "missing"
        message = f"{path}: {what} value" + (f"; expected one of {expected}" if expected else "")
        return path, message
    path = ".".join(loc)
    return path or None, f"{path or '(body)'}: {err['msg']}"


# --- HTTPS exchanges --------------------------------------------------------------------


class AcquireResponse(Strict):
    task: TaskSpec
    # Fencing token: every log batch and the result carry it; a stale one is refused.
    attempt: int
    # Sensitive env values sealed to the delegate's X25519 key (shared.sealing), or None.
    sealed_env: str | None = None
    # The managed secrets the task references (shared.secretspec), by name.
    secrets: list[SecretDelivery] = Field(default_factory=list)
    # Credentials of the secret managers above that keep them as builtin secrets: manager id
    # -> a JSON object of strings sealed to the delegate (secretspec.credentials_context).
    credentials: dict[str, str] = Field(default_factory=dict)
    # Referenced names the manager cannot deliver, with why (never a value): the delegate
    # fails the task with these before anything runs.
    unavailable: dict[str, str] = Field(default_factory=dict)
    # The attempt's workload-identity request credential, sealed to the delegate's key
    # (context "<task id>:<attempt>:id-token"): the task trades it for an OIDC token at the
    # manager's /api/v1/id-token while this attempt runs. Left out of the JSON when None.
    id_token_request: str | None = Field(default=None, exclude_if=lambda v: v is None)


def _is_none(value: object) -> bool:
    return value is None


class LogLine(Strict):
    """One line of a task's log: text, or bytes that are not text (:mod:`shared.logbytes`)."""

    # Stored as a 64-bit integer: a larger one is refused here, not by the database.
    seq: int = Field(ge=0, le=2**63 - 1)
    stream: Literal["stdout", "stderr", "system"]
    ts: float = Field(allow_inf_nan=False)
    # The line, when its bytes are UTF-8 text...
    text: str = ""
    # ...else its exact bytes in base64, and ``text`` is empty. Left out of the JSON when
    # None, so a line of text is on the wire what it always was.
    data: str | None = Field(default=None, exclude_if=_is_none)

    @model_validator(mode="after")
    def _one_form(self) -> LogLine:
        if self.data is not None:
            if self.text:
                raise ValueError("a line carries text or data, not both")
            from_base64(self.data)
        return self

    @classmethod
    def of_bytes(
        cls, seq: int, stream: Literal["stdout", "stderr", "system"], ts: float, raw: bytes
    ) -> LogLine:
        """The line of ``raw``: as text when it is text, else as data."""
        if is_text(raw):
            return cls(seq=seq, stream=stream, ts=ts, text=raw.decode("utf-8"))
        return cls(seq=seq, stream=stream, ts=ts, data=to_base64(raw))

    @property
    def raw(self) -> bytes:
        """The line's bytes (a lone surrogate in ``text`` raises UnicodeEncodeError)."""
        return self.text.encode("utf-8") if self.data is None else from_base64(self.data)

    @property
    def nbytes(self) -> int:
        """How many bytes the line stands for, without decoding its data."""
        if self.data is None:
            return len(self.text.encode("utf-8", "replace"))
        return len(self.data) * 3 // 4 - self.data.count("=", -2)


class LogBatch(Strict):
    attempt: int = Field(ge=1)
    lines: list[LogLine] = Field(max_length=MAX_LOG_BATCH_LINES)


class LogBatchAck(Strict):
    accepted: int
    # True once the task was cancelled: the delegate stops the process.
    cancel: bool = False


class TaskResult(Strict):
    attempt: int = Field(ge=1)
    status: Literal["succeeded", "failed", "cancelled", "timed_out"]
    exit_code: int | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    error: str | None = Field(default=None, max_length=16384)
    deployment: Deployment | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # The highest log seq the delegate sent for this attempt, so gaps are detectable.
    last_seq: int = -1


class ResultAck(Strict):
    state: TaskState
    # False when this result was already recorded (an idempotent resend).
    recorded: bool


class ErrorDetail(Strict):
    code: str
    message: str
    field: str | None = None


class ErrorBody(Strict):
    error: ErrorDetail


# --- stream frames of protocol v2 (after the models they carry) ------------------------


class TaskAssigned(Strict):
    """Manager -> delegate: a task claimed for this delegate (the claim is committed before
    the frame is sent), with everything it needs to run: what a v1 acquire answered."""

    type: Literal["assignment"] = "assignment"
    assignment: AcquireResponse


class TaskAck(Strict):
    """Delegate -> manager: it runs the assignment. Idempotent."""

    type: Literal["ack"] = "ack"
    task_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)


class TaskDecline(Strict):
    """Delegate -> manager: it will not run the assignment; the task goes to another
    delegate and the attempt does not count against the task's max_attempts. ``full``: no
    free slot (nothing more is pushed to it until a slot frees or it reports capacity)."""

    type: Literal["decline"] = "decline"
    task_id: str = Field(max_length=64)
    attempt: int = Field(ge=1)
    reason: Literal["full", "draining", "unfit"] = "full"


class StreamLogs(Strict):
    """Delegate -> manager: a log batch over the stream (HTTPS POST .../logs is the
    fallback). Answered by a :class:`StreamReply` with the same ``id``."""

    type: Literal["logs"] = "logs"
    id: int = Field(ge=0)
    task_id: str = Field(max_length=64)
    batch: LogBatch


class StreamResult(Strict):
    """Delegate -> manager: a task's result over the stream (HTTPS POST .../result is the
    fallback). Answered by a :class:`StreamReply` with the same ``id``."""

    type: Literal["result"] = "result"
    id: int = Field(ge=0)
    task_id: str = Field(max_length=64)
    result: TaskResult


class StreamReply(Strict):
    """Manager -> delegate: the answer to the request ``id`` (StreamLogs or StreamResult):
    exactly one of ``logs``, ``result`` (what the HTTPS route answers) or ``error`` (what
    its error body says; ``status`` is the HTTP status the route would have used)."""

    type: Literal["reply"] = "reply"
    id: int = Field(ge=0)
    logs: LogBatchAck | None = Field(default=None, exclude_if=lambda v: v is None)
    result: ResultAck | None = Field(default=None, exclude_if=lambda v: v is None)
    error: ErrorDetail | None = Field(default=None, exclude_if=lambda v: v is None)
    status: int | None = Field(default=None, exclude_if=lambda v: v is None)


DelegateFrame = Annotated[
    Hello | Heartbeat | TaskAck | TaskDecline | StreamLogs | StreamResult,
    Field(discriminator="type"),
]
ManagerFrame = Annotated[
    HeartbeatAck | TaskAssigned | TaskCancel | TaskDrain | StreamReply,
    Field(discriminator="type"),
]
DelegateFrameType = Hello | Heartbeat | TaskAck | TaskDecline | StreamLogs | StreamResult
ManagerFrameType = HeartbeatAck | TaskAssigned | TaskCancel | TaskDrain | StreamReply
# Built at the first frame, as the models are (defer_build): not by every process that imports
# the protocol, the `tether` command's included.
_delegate_frames: TypeAdapter[DelegateFrameType] = TypeAdapter(
    DelegateFrame, config=ConfigDict(defer_build=True)
)
_manager_frames: TypeAdapter[ManagerFrameType] = TypeAdapter(
    ManagerFrame, config=ConfigDict(defer_build=True)
)


def _check_size(raw: str | bytes) -> None:
    # Characters are at most 4 bytes, so only long text needs encoding to be measured.
    size = (
        len(raw.encode()) if isinstance(raw, str) and len(raw) * 4 > MAX_FRAME_BYTES else len(raw)
    )
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")


def parse_delegate_frame(raw: str | bytes) -> DelegateFrameType:
    _check_size(raw)
    try:
        return _delegate_frames.validate_json(raw)
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc)[1]) from None


def parse_manager_frame(raw: str | bytes) -> ManagerFrameType:
    _check_size(raw)
    try:
        return _manager_frames.validate_json(raw)
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc)[1]) from None
