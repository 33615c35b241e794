"""``tether-delegate doctor``: the checks a support engineer asks for, one line each.

Each check prints ``ok``, ``warn`` or ``fail``, what it found and, when it is not ok, what
to change. The exit status is 1 when a check failed, else 0. Nothing is changed: no
delegate is registered (the token is checked with GET /api/v1/delegate/token), no data
dir is made, and no secret (the token, a proxy's password) is printed.

Secret managers: a delegate learns those of a task from the manager when it acquires the
task, so the doctor cannot list the manager's; it checks the vendor libraries this host has
(the extras) and the endpoints named in this host's environment, which the providers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib.util
import os
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from delegate.config import DelegateConfig
from shared.extras import EXTRAS
from shared.limits import SPOOL_TOTAL_BYTES
from shared.tls import client_context

__all__ = ["SKEW_FAIL_S", "SKEW_WARN_S", "Check", "Seen", "check_clock", "run_doctor"]

Status = Literal["ok", "warn", "fail"]

# The clock may be this far off before it is worth a warning, and a failure: the Date
# header has a resolution of one second, and session credentials live for minutes.
SKEW_WARN_S = 5.0
SKEW_FAIL_S = 60.0
# The endpoints the providers' own clients read from the environment.
_ENDPOINT_VARIABLES = (
    ("vault", "VAULT_ADDR"),
    ("aws", "AWS_ENDPOINT_URL"),
    ("aws", "AWS_ENDPOINT_URL_KMS"),
    ("aws", "AWS_ENDPOINT_URL_SECRETS_MANAGER"),
)
_TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status:4}  {self.name:15} {self.detail}"


@dataclass
class Seen:
    """What the TLS check learnt, for the checks after it."""

    date: str | None = None
    rtt: float = 0.0
    reached: bool = False


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or 443


def _redact(url: str) -> str:
    """A proxy URL without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_dns(config: DelegateConfig) -> Check:
    host, port = _host_port(config.manager_url)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Check(
            "dns", "fail", f"{host} does not resolve ({exc.strerror}); check --manager-url"
        )
    addresses = sorted({str(info[4][0]) for info in found})
    return Check("dns", "ok", f"{host} resolves to {', '.join(addresses)}")


def check_proxy(config: DelegateConfig) -> Check:
    host, _ = _host_port(config.manager_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https")
    if proxy is None:
        return Check("proxy", "ok", "no HTTPS proxy set: the manager is reached directly")
    if urllib.request.proxy_bypass(host):
        return Check(
            "proxy", "ok", f"{host} is in NO_PROXY: reached directly, not through the proxy"
        )
    return Check("proxy", "ok", f"the manager is reached through {_redact(proxy)} (HTTPS_PROXY)")


def _trust(config: DelegateConfig) -> str:
    if config.ca_file is None:
        return "the system's CA store (no --ca-file)"
    return f"{config.ca_file} (--ca-file)"


def _name(cert: Mapping[str, Any], field: str) -> str:
    for rdn in cert.get(field) or ():
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


async def _peer_certificate(
    config: DelegateConfig, ssl_ctx: ssl.SSLContext
) -> tuple[str, dict[str, Any]] | None:
    """The TLS version and the manager's certificate, from a handshake of its own (the
    request's connection is pooled out of reach); None through a proxy."""
    host, port = _host_port(config.manager_url)
    if urllib.request.getproxies().get("https") and not urllib.request.proxy_bypass(host):
        return None
    try:
        async with asyncio.timeout(15):
            _, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
    except (OSError, TimeoutError):
        return None
    ssl_object = writer.get_extra_info("ssl_object")
    found = (ssl_object.version() or "?", ssl_object.getpeercert() or {})
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return found


async def check_tls(
    config: DelegateConfig, session: aiohttp.ClientSession, seen: Seen, ssl_ctx: ssl.SSLContext
) -> Check:
    url = f"{config.manager_url}/healthz"
    started = time.monotonic()
    try:
        async with session.get(url) as response:
            seen.rtt = time.monotonic() - started
            seen.date = response.headers.get("Date")
            seen.reached = True
            await response.read()
    except aiohttp.ClientConnectorCertificateError as exc:
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or str(cause)
        return Check(
            "tls",
            "fail",
            f"the manager's certificate is not trusted by {_trust(config)}: {reason};"
            " check --ca-file (the manager's tls/ca.pem) and that --manager-url uses a name"
            " the certificate carries",
        )
    except aiohttp.ClientSSLError as exc:
        return Check("tls", "fail", f"TLS with {config.manager_url} failed: {exc}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Check(
            "tls", "fail", f"cannot reach {config.manager_url}: {exc or type(exc).__name__}"
        )
    cert = await _peer_certificate(config, ssl_ctx)
    if cert is None:
        # Through a proxy: the request above was verified, its certificate is not shown.
        return Check("tls", "ok", f"verified against {_trust(config)}; no certificate pin is set")
    return Check(
        "tls",
        "ok",
        f"{cert[0]}, certificate for {_name(cert[1], 'subject')} issued by"
        f" {_name(cert[1], 'issuer')}, verified against {_trust(config)}; no certificate pin"
        " is set",
    )


def check_clock(seen: Seen, now: Callable[[], float] = time.time) -> Check:
    if not seen.reached:
        return Check("clock", "warn", "not checked: the manager was not reached")
    if seen.date is None:
        return Check("clock", "warn", "not checked: the manager's answer carried no Date")
    server = email.utils.parsedate_to_datetime(seen.date).timestamp()
    # Date is whole seconds, taken while the answer was on its way.
    skew = now() - server
    slack = 1.0 + seen.rtt
    off = max(0.0, abs(skew) - slack)
    text = f"{'ahead of' if skew > 0 else 'behind'} the manager by {abs(skew):.0f} s"
    if off >= SKEW_FAIL_S:
        return Check("clock", "fail", f"{text}: sessions will fail; sync this host's clock (NTP)")
    if off >= SKEW_WARN_S:
        return Check("clock", "warn", f"{text}; sync this host's clock (NTP)")
    return Check("clock", "ok", f"within {SKEW_WARN_S:.0f} s of the manager ({text})")


def _scope_text(scope: dict[str, object] | None) -> str:
    if not scope:
        return "unknown scope"
    if scope.get("account_wide"):
        where = "the whole account"
    else:
        parts = [
            *(f"app {a}" for a in scope.get("apps") or ()),  # type: ignore[attr-defined]
            *(f"env {e}" for e in scope.get("envs") or ()),  # type: ignore[attr-defined]
            *(f"{t} environments" for t in scope.get("env_types") or ()),  # type: ignore[attr-defined]
        ]
        where = ", ".join(parts) or "nothing"
    selectors = scope.get("selectors")
    allowed = "any selector" if selectors is None else f"selectors {', '.join(selectors)}"  # type: ignore[arg-type]
    return f"{where}; {allowed}"


async def check_token(config: DelegateConfig, session: aiohttp.ClientSession, seen: Seen) -> Check:
    if not seen.reached:
        return Check("token", "warn", "not checked: the manager was not reached")
    url = f"{config.manager_url}/api/v1/delegate/token"
    headers = {"Authorization": f"Bearer {config.token}"}
    try:
        async with session.get(url, headers=headers) as response:
            body = await response.json(content_type=None) if response.status < 500 else {}
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check("token", "fail", f"cannot ask the manager about the token: {exc}")
    if status == 404:
        return Check("token", "warn", "not checked: this manager is too old to say")
    if status != 200:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return Check(
            "token",
            "fail",
            f"the manager refused the token ({status}: {message or 'no reason given'});"
            " check --token-file, or make a new token (tether token create)",
        )
    return Check(
        "token",
        "ok",
        f"valid: token {body.get('name')!r} ({body.get('id')}),"
        f" for {_scope_text(body.get('scope'))}",
    )


async def _reachable(url: str) -> str | None:
    """None when a TCP connection to ``url``'s host and port opens, else why not."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    writer.close()
    await writer.wait_closed()
    return None


async def check_secret_managers(env: dict[str, str] | None = None) -> list[Check]:
    env = dict(os.environ if env is None else env)
    checks = []
    installed: list[str] = []
    missing: list[str] = []
    for module, (extra, _what) in EXTRAS.items():
        if extra in ("saml", "verify") or module == "botocore":
            continue
        (installed if importlib.util.find_spec(module) is not None else missing).append(extra)
    if missing:
        checks.append(
            Check(
                "secret-libs",
                "warn",
                f"not installed: {', '.join(missing)} (tasks using those secret managers fail"
                f" here; pip install 'tether[{','.join(missing)}]'); installed:"
                f" {', '.join(installed) or 'none'}",
            )
        )
    else:
        checks.append(Check("secret-libs", "ok", f"installed: {', '.join(installed)}"))
    named = [(extra, var, env[var]) for extra, var in _ENDPOINT_VARIABLES if env.get(var)]
    if not named:
        checks.append(
            Check(
                "secret-managers",
                "ok",
                "none named in this environment (VAULT_ADDR, AWS_ENDPOINT_URL...); those"
                " configured on the manager come with each task",
            )
        )
    for _extra, var, url in named:
        problem = await _reachable(url)
        if problem is None:
            checks.append(Check("secret-managers", "ok", f"{var}={url} is reachable"))
        else:
            checks.append(
                Check("secret-managers", "fail", f"{var}={url} is not reachable: {problem}")
            )
    return checks


def check_isolation(config: DelegateConfig, switcher: Callable[[], Sequence[str] | None]) -> Check:
    if config.shared_user:
        return Check(
            "isolation",
            "warn",
            "tasks run as this delegate's own user (--shared-user): a task can read its"
            " token, key and spool",
        )
    try:
        users = switcher()
    except Exception as exc:  # IsolationError, LauncherError: said as the run would
        return Check("isolation", "fail", str(exc))
    how = (
        f"through the task launcher at {config.launcher_socket}"
        if config.launcher_socket
        else "switched to by this process"
    )
    return Check("isolation", "ok", f"tasks run as {', '.join(users or ())} ({how})")


def check_spool(config: DelegateConfig) -> Check:
    root = config.data_dir / "spool"
    if not root.exists():
        return Check("spool", "ok", f"{root}: empty (not made yet)")
    size = 0
    files = 0
    try:
        for path in root.rglob("*"):
            if path.is_file():
                files += 1
                size += path.stat().st_size
    except OSError as exc:
        return Check("spool", "fail", f"cannot read {root}: {exc.strerror}")
    text = (
        f"{root}: {size / 2**20:.1f} MiB in {files} file(s) of {SPOOL_TOTAL_BYTES / 2**20:.0f} MiB"
    )
    if size >= 0.8 * SPOOL_TOTAL_BYTES:
        return Check("spool", "warn", f"{text}: nearly full; is the manager taking logs?")
    return Check("spool", "ok", text)


async def run_doctor(
    config: DelegateConfig,
    switcher: Callable[[], Sequence[str] | None],
    out: Callable[[str], None] = print,
) -> int:
    """Every check, printed as it completes; 1 when one failed."""
    checks: list[Check] = []

    def say(check: Check) -> None:
        checks.append(check)
        out(check.line())

    say(check_dns(config))
    say(check_proxy(config))
    seen = Seen()
    try:
        ssl_ctx = client_context(
            config.ca_file, client_cert=config.client_cert, client_key=config.client_key
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        say(Check("tls", "fail", f"cannot load {_trust(config)}: {exc}"))
    else:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx), timeout=_TIMEOUT, trust_env=True
        ) as session:
            steps: list[Callable[[], Awaitable[Check]]] = [
                lambda: check_tls(config, session, seen, ssl_ctx),
                lambda: asyncio.sleep(0, check_clock(seen)),
                lambda: check_token(config, session, seen),
            ]
            for step in steps:
                say(await step())
    for check in await check_secret_managers():
        say(check)
    say(check_isolation(config, switcher))
    say(check_spool(config))
    failed = [c.name for c in checks if c.status == "fail"]
    warned = [c.name for c in checks if c.status == "warn"]
    summary = f"{len(checks)} checks: {len(failed)} failed, {len(warned)} warnings"
    out(f"{summary} ({', '.join(failed)})" if failed else summary)
    return 1 if failed else 0
