"""TetherClient against a small real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from manager.client import (
    ApiError,
    ConnectionFailed,
    EndEvent,
    FollowEvent,
    InvalidResponse,
    LogEvent,
    StateEvent,
    TetherClient,
    tls_client_context,
)
from manager.client import client as client_module
from manager.schemas.tasks import LogEntry, TaskSubmit, TaskView
from shared.protocol import ShellPayload, TaskState, TaskType

API_KEY = "tk_test_0123456789abcdef"


class Serve(Protocol):
    def __call__(self, app: web.Application, **kwargs: Any) -> Awaitable[str]: ...


@pytest.fixture
async def dead_url() -> str:
    """A URL nobody listens on: a port that was just free."""
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    await server.close()
    return url


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an app on 127.0.0.1 (a free port) and give its base URL."""
    servers: list[TestServer] = []

    async def start(app: web.Application, **kwargs: Any) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**kwargs)
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


def task_view(task_id: str = "task_1", state: TaskState = TaskState.QUEUED) -> TaskView:
    return TaskView(
        id=task_id,
        type=TaskType.SHELL,
        state=state,
        payload=ShellPayload(script="echo hi"),
        selectors=[],
        secret_env_names=[],
        timeout_s=600,
        queue_timeout_s=300,
        max_attempts=1,
        attempt=0,
        created_at=1_700_000_000.0,
    )


def json_response(model: Any, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status)


def client_for(base_url: str, **kwargs: Any) -> TetherClient:
    kwargs.setdefault("follow_backoff", 0)
    return TetherClient(base_url, api_key=API_KEY, **kwargs)


# --- plain calls -------------------------------------------------------------------------


async def test_submit_sends_the_bearer_key_and_the_model(serve: Serve) -> None:
    seen: list[tuple[str | None, dict[str, Any]]] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), await request.json()))
        return json_response(task_view(), status=201)

    app = web.Application()
    app.router.add_post("/api/v1/tasks", submit)
    async with client_for(await serve(app)) as client:
        task = await client.submit_task(
            TaskSubmit(payload=ShellPayload(script="echo hi"), selectors=["linux"])
        )

    assert task == task_view()
    auth, body = seen[0]
    assert auth == f"Bearer {API_KEY}"
    assert body["payload"]["script"] == "echo hi"
    assert body["selectors"] == ["linux"]


async def test_error_body_becomes_api_error_fields(serve: Serve) -> None:
    async def submit(request: web.Request) -> web.Response:
        return error_response(422, "invalid", "must be positive", "timeout_s")

    app = web.Application()
    app.router.add_post("/api/v1/tasks", submit)
    async with client_for(await serve(app)) as client:
        with pytest.raises(ApiError) as caught:
            await client.submit_task(TaskSubmit(payload=ShellPayload(script="true")))

    err = caught.value
    assert (err.status, err.code, err.message, err.field) == (
        422,
        "invalid",
        "must be positive",
        "timeout_s",
    )
    assert str(err) == "HTTP 422 invalid: must be positive (field: timeout_s)"


async def test_retry_after_of_a_throttled_call_is_kept(serve: Serve) -> None:
    async def get(request: web.Request) -> web.Response:
        response = error_response(429, "throttled", "Too Many requests. Throttled. Max QPS: 5")
        response.headers["Retry-After"] = "2"
        return response

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{id}", get)
    async with client_for(await serve(app)) as client:
        with pytest.raises(ApiError) as caught:
            await client.get_task("task_1")

    assert caught.value.status == 429
    assert caught.value.retry_after == 2.0


async def test_a_proxy_page_becomes_an_api_error_without_the_page(serve: Serve) -> None:
    async def get(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{id}", get)
    async with client_for(await serve(app)) as client:
        with pytest.raises(ApiError) as caught:
            await client.get_task("task_1")

    assert (caught.value.status, caught.value.code) == (502, "http_502")
    assert caught.value.message == "Bad Gateway"


async def test_a_2xx_body_that_does_not_fit_raises_invalid_response(serve: Serve) -> None:
    async def get(request: web.Request) -> web.Response:
        return web.json_response({"id": "task_1"})

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{id}", get)
    async with client_for(await serve(app)) as client:
        with pytest.raises(InvalidResponse, match="unexpected answer to GET"):
            await client.get_task("task_1")


async def test_list_tasks_sends_only_the_filters_given(serve: Serve) -> None:
    queries: list[dict[str, str]] = []

    async def list_tasks(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        return web.json_response({"tasks": [task_view().model_dump(mode="json")]})

    app = web.Application()
    app.router.add_get("/api/v1/tasks", list_tasks)
    async with client_for(await serve(app)) as client:
        tasks = await client.list_tasks(state=TaskState.RUNNING, since=1_700_000_000, limit=5)

    assert tasks == [task_view()]
    assert queries == [{"state": "running", "since": "1700000000", "limit": "5"}]


async def test_a_task_id_stays_one_path_segment(serve: Serve) -> None:
    ids: list[str] = []

    async def get(request: web.Request) -> web.Response:
        ids.append(request.match_info["id"])
        return json_response(task_view())

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{id}", get)
    async with client_for(await serve(app)) as client:
        await client.get_task("../tokens?x=1")

    assert ids == ["../tokens?x=1"]


async def test_delegates_and_tokens_are_unwrapped(serve: Serve) -> None:
    token = {"id": "tok_1", "name": "ci", "created_at": 1.0, "revoked_at": None}

    async def delegates(request: web.Request) -> web.Response:
        return web.json_response({"delegates": []})

    async def tokens(request: web.Request) -> web.Response:
        return web.json_response({"tokens": [token]})

    async def revoke(request: web.Request) -> web.Response:
        return web.json_response({**token, "name": request.match_info["name"], "revoked_at": 2.0})

    app = web.Application()
    app.router.add_get("/api/v1/delegates", delegates)
    app.router.add_get("/api/v1/tokens", tokens)
    app.router.add_delete("/api/v1/tokens/{name}", revoke)
    async with client_for(await serve(app)) as client:
        assert await client.list_delegates() == []
        assert [t.name for t in await client.list_tokens()] == ["ci"]
        assert (await client.revoke_token("ci")).revoked_at == 2.0


async def test_health_is_true_on_2xx_and_false_otherwise(serve: Serve) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    async with client_for(await serve(app)) as client:
        assert await client.health() is True
    async with client_for(await serve(web.Application())) as client:
        assert await client.health() is False


async def test_a_refused_connection_raises_connection_failed(dead_url: str) -> None:
    async with client_for(dead_url) as client:
        with pytest.raises(ConnectionFailed) as caught:
            await client.get_task("task_1")
        assert await client.health() is False

    assert str(caught.value).startswith(f"cannot connect to {dead_url} (")
    assert caught.value.kind == "unreachable"


async def test_the_api_key_shows_in_no_repr_or_message(serve: Serve, dead_url: str) -> None:
    async def get(request: web.Request) -> web.Response:
        return error_response(401, "unauthorized", "bad API key")

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{id}", get)
    async with client_for(await serve(app)) as client:
        with pytest.raises(ApiError) as api_error:
            await client.get_task("task_1")
        text = " ".join([repr(client), str(api_error.value), repr(api_error.value)])
    async with client_for(dead_url) as client:
        with pytest.raises(ConnectionFailed) as conn_error:
            await client.get_task("task_1")
        text += str(conn_error.value)

    assert API_KEY not in text


def test_only_http_and_https_urls_are_accepted() -> None:
    TetherClient("http://127.0.0.1:8080", api_key=None)
    with pytest.raises(ValueError, match="http"):
        TetherClient("ftp://127.0.0.1", api_key=None)


# --- follow ------------------------------------------------------------------------------


def log_line(seq: int, text: str, attempt: int = 1) -> dict[str, Any]:
    entry = LogEntry(attempt=attempt, seq=seq, stream="stdout", ts=1_700_000_001.0 + seq, text=text)
    return {"kind": "log", "line": entry.model_dump(mode="json")}


def state_line(state: TaskState) -> dict[str, Any]:
    return {"kind": "state", "state": state.value}


def end_line() -> dict[str, Any]:
    return {"kind": "end", "task": task_view(state=TaskState.SUCCEEDED).model_dump(mode="json")}


def ndjson(*items: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


LOG = [log_line(seq, f"line {seq}") for seq in range(4)]


Connection = Callable[[web.Request, web.StreamResponse, str | None], Awaitable[None]]


class FollowServer:
    """Serves the follow stream of ``task_1``; each connection is one scripted handler.

    ``afters`` records the ``after`` of every connection, so a test can check the client
    resumed where it should.
    """

    def __init__(self, *connections: Connection) -> None:
        self.connections = list(connections)
        self.afters: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/tasks/{id}/logs/follow", self.follow)
        return app

    async def follow(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] != "task_1":
            return error_response(404, "not_found", "no such task")
        after = request.query.get("after")
        self.afters.append(after)
        handler = self.connections[min(len(self.afters), len(self.connections)) - 1]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await handler(request, response, after)
        if request.transport is not None and not request.transport.is_closing():
            await response.write_eof()
        return response


def drop(request: web.Request) -> None:
    """Cut the connection, mid-chunk, as a crashed proxy would."""
    assert request.transport is not None
    request.transport.abort()


def lines_after(after: str | None) -> list[dict[str, Any]]:
    """What a correct server sends: log lines whose position comes after the cursor."""
    if after is None:
        return LOG
    attempt, seq = (int(part) for part in after.split(":"))
    return [item for item in LOG if (item["line"]["attempt"], item["line"]["seq"]) > (attempt, seq)]


async def collect(client: TetherClient, after: str | None = None) -> list[FollowEvent]:
    return [event async for event in client.follow_logs("task_1", after=after)]


def summary(events: list[FollowEvent]) -> list[str]:
    out: list[str] = []
    for event in events:
        if isinstance(event, LogEvent):
            out.append(f"log {event.line.attempt}:{event.line.seq}")
        elif isinstance(event, StateEvent):
            out.append(f"state {event.state}")
        else:
            out.append(f"end {event.task.state}")
    return out


async def test_follow_reconnects_after_a_drop_and_resumes_from_the_cursor(serve: Serve) -> None:
    async def first(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        await response.write(
            ndjson(state_line(TaskState.QUEUED), LOG[0], {"kind": "ping"})
            + ndjson(state_line(TaskState.RUNNING), LOG[1])
            + ndjson(LOG[2])[:20]  # half a line, then the connection dies
        )
        drop(request)

    async def second(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        # A reconnect opens with the current state again; the client must not repeat it.
        await response.write(ndjson(state_line(TaskState.RUNNING), *lines_after(after), end_line()))

    server = FollowServer(first, second)
    async with client_for(await serve(server.app())) as client:
        events = await collect(client)

    assert server.afters == [None, "1:1"]
    assert summary(events) == [
        "state queued",
        "log 1:0",
        "state running",
        "log 1:1",
        "log 1:2",
        "log 1:3",
        "end succeeded",
    ]


async def test_follow_reconnects_when_the_stream_closes_cleanly_before_the_end(
    serve: Serve,
) -> None:
    async def first(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        await response.write(ndjson(*LOG[:3]))

    async def second(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        await response.write(ndjson(*lines_after(after), end_line()))

    server = FollowServer(first, second)
    async with client_for(await serve(server.app())) as client:
        events = await collect(client, after="0:0")

    assert server.afters == ["0:0", "1:2"]
    assert summary(events) == ["log 1:0", "log 1:1", "log 1:2", "log 1:3", "end succeeded"]


async def test_follow_drops_lines_a_server_resends_after_a_reconnect(serve: Serve) -> None:
    async def first(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        await response.write(ndjson(*LOG[:2]))
        drop(request)

    async def second(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        await response.write(ndjson(*LOG, end_line()))  # ignores the cursor

    server = FollowServer(first, second)
    async with client_for(await serve(server.app())) as client:
        events = await collect(client)

    assert summary(events) == ["log 1:0", "log 1:1", "log 1:2", "log 1:3", "end succeeded"]


async def test_follow_gives_up_after_its_bounded_failed_connections(serve: Serve) -> None:
    async def empty(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        drop(request)

    server = FollowServer(empty)
    async with client_for(await serve(server.app()), follow_retries=2) as client:
        with pytest.raises(ConnectionFailed, match="3 failed connections in a row"):
            await collect(client)

    assert len(server.afters) == 3


async def test_follow_retries_a_503_and_raises_a_404_at_once(serve: Serve) -> None:
    calls: list[str] = []

    async def follow(request: web.Request) -> web.StreamResponse:
        calls.append(request.match_info["id"])
        if request.match_info["id"] == "task_1" and len(calls) == 1:
            return error_response(503, "starting", "not ready")
        if request.match_info["id"] == "task_1":
            return web.Response(body=ndjson(end_line()), content_type="application/x-ndjson")
        return error_response(404, "not_found", "no such task")

    app = web.Application()
    app.router.add_get("/api/v1/tasks/{id}/logs/follow", follow)
    async with client_for(await serve(app)) as client:
        assert summary(await collect(client)) == ["end succeeded"]
        with pytest.raises(ApiError) as caught:
            await collect_other(client, "task_x")

    assert caught.value.status == 404
    assert calls == ["task_1", "task_1", "task_x"]


async def collect_other(client: TetherClient, task_id: str) -> list[FollowEvent]:
    return [event async for event in client.follow_logs(task_id)]


async def test_follow_leaving_early_closes_the_stream(serve: Serve) -> None:
    async def endless(
        request: web.Request, response: web.StreamResponse, after: str | None
    ) -> None:
        await response.write(ndjson(*LOG))

    server = FollowServer(endless)
    client = client_for(await serve(server.app()))
    async with client, contextlib.aclosing(client.follow_logs("task_1")) as events:
        async for event in events:
            assert isinstance(event, LogEvent)
            break

    assert server.afters == [None]


async def test_an_end_line_carries_the_final_task(serve: Serve) -> None:
    async def done(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        await response.write(ndjson(end_line()))

    server = FollowServer(done)
    async with client_for(await serve(server.app())) as client:
        [event] = await collect(client)

    assert isinstance(event, EndEvent)
    assert event.task.state is TaskState.SUCCEEDED


async def test_follows_one_after_another_share_one_connection(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller waiting on each task's end in turn: the stream is read to its close after the
    # end line, so its connection goes back to the pool (no new connection, no handshake).
    # The drain's bound far above the server's pause: a loaded machine cannot outlast it.
    monkeypatch.setattr(client_module, "_END_DRAIN_S", 60.0)
    peers: list[object] = []

    async def done(request: web.Request, response: web.StreamResponse, after: str | None) -> None:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        await response.write(ndjson(end_line()))
        # The close comes in a write of its own, after the end line, as the manager's does.
        await asyncio.sleep(0.02)

    server = FollowServer(done)
    async with client_for(await serve(server.app())) as client:
        for _ in range(3):
            assert summary(await collect(client)) == ["end succeeded"]

    assert len(peers) == 3
    assert len(set(peers)) == 1


async def test_a_stream_left_open_after_its_end_line_does_not_hold_the_caller(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "_END_DRAIN_S", 0.05)
    release = asyncio.Event()

    async def lingering(
        request: web.Request, response: web.StreamResponse, after: str | None
    ) -> None:
        await response.write(ndjson(end_line()))
        await release.wait()

    server = FollowServer(lingering)
    async with client_for(await serve(server.app())) as client:
        assert summary(await collect(client)) == ["end succeeded"]
    release.set()
    assert server.afters == [None]


# --- TLS ---------------------------------------------------------------------------------


def test_the_tls_context_verifies_and_speaks_tls13_only() -> None:
    context = tls_client_context()

    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def server_context(cert_file: Path, key_file: Path, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.maximum_version = maximum
    return context


async def test_https_trusts_the_ca_file_and_refuses_tls12(serve: Serve, tmp_path: Path) -> None:
    ca_file, cert_file, key_file = make_ca_and_server_cert(tmp_path)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def app() -> web.Application:
        application = web.Application()
        application.router.add_get("/healthz", healthz)
        return application

    tls13 = await serve(app(), ssl=server_context(cert_file, key_file, ssl.TLSVersion.TLSv1_3))
    tls12 = await serve(app(), ssl=server_context(cert_file, key_file, ssl.TLSVersion.TLSv1_2))
    assert tls13.startswith("https://")

    async with client_for(tls13, ca_file=ca_file) as client:
        assert await client.health() is True
    async with client_for(tls13) as client:  # system roots do not know the test CA
        assert await client.health() is False
    async with client_for(tls12, ca_file=ca_file) as client:
        with pytest.raises(ConnectionFailed):
            await client.get_task("task_1")
