"""The monitoring a verification asks, from inside the customer's network.

:class:`Provider` is what the runner needs of any monitoring system: one series of numbers
for a query over a time range. Prometheus is the first (``/api/v1/query_range``); Loki,
Elasticsearch or Datadog would each be another class with the same method.

Every failure is a :class:`ProviderError` whose text names the provider and the cause
("prometheus at http://prom:9090: connection refused"), never a credential: the URL is shown
without any user info, and the request's headers never reach a message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import ssl
import tempfile
from collections.abc import Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from shared.verify.spec import ProviderSpec

__all__ = [
    "MAX_POINTS",
    "MAX_RESPONSE_BYTES",
    "PrometheusProvider",
    "Provider",
    "ProviderError",
    "QueryError",
    "choose_step",
    "parse_matrix",
]

# Points one query may ask for per window: bounds the provider's work, the answer's size and
# the delegate's memory, whatever window a spec names.
MAX_POINTS = 1000
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Aim for about this many points when the spec names no step.
_DEFAULT_POINTS = 100


class ProviderError(Exception):
    """The provider could not answer: unreachable, an HTTP error, a timeout, a bad answer."""


class QueryError(Exception):
    """The provider answered, but not with one series: the query needs changing."""


class Provider(Protocol):
    name: str

    async def range(
        self, query: str, start: float, end: float, step: float
    ) -> list[tuple[float, float]]:
        """(unix seconds, value) of the query's one series over [start, end]."""

    async def aclose(self) -> None: ...


def choose_step(duration: float, wanted: float | None = None) -> float:
    """The step for a window of ``duration`` seconds: ``wanted`` or about 100 points, never
    under a second, and never more than :data:`MAX_POINTS` points."""
    step = wanted if wanted is not None else duration / _DEFAULT_POINTS
    step = max(step, 1.0, duration / (MAX_POINTS - 1))
    return float(math.ceil(step))


def parse_matrix(body: bytes) -> list[tuple[float, float]]:
    """The one series of a ``query_range`` answer; QueryError for several, ValueError for an
    answer that is not Prometheus's."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise ValueError("not a successful answer")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise ValueError("not a range answer (resultType matrix)")
    result = data.get("result")
    if not isinstance(result, list):
        raise TypeError("no result list")
    if not result:
        return []
    if len(result) > 1:
        raise QueryError(
            f"the query returned {len(result)} series; aggregate it to one (sum(...), max(...))"
        )
    points: list[tuple[float, float]] = []
    for ts, value in result[0].get("values", []):
        # Prometheus sends values as strings: "NaN" and "+Inf" included; stats drops those.
        points.append((float(ts), float(value)))
    return points


class PrometheusProvider:
    """Prometheus's HTTP API; ``credentials`` are the rendered values by role (bearer_token,
    basic_password, tls_cert, tls_key, tls_ca)."""

    def __init__(self, spec: ProviderSpec, credentials: Mapping[str, str]) -> None:
        self._spec = spec
        url = URL(spec.url)
        # Shown in every error: never the URL's user info, should one be given there.
        shown = url.with_user(None).with_password(None).with_query(None)
        self.name = f"prometheus at {str(shown).rstrip('/')}"
        self._base = url
        self._headers: dict[str, str] = {}
        if token := credentials.get("bearer_token"):
            self._headers["Authorization"] = f"Bearer {token.strip()}"
        if spec.auth.basic_username is not None:
            pair = f"{spec.auth.basic_username}:{credentials.get('basic_password', '')}"
            self._headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
        self._ssl = _tls_context(credentials) if url.scheme == "https" else None
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._spec.query_timeout_s)
            )
        return self._session

    async def range(
        self, query: str, start: float, end: float, step: float
    ) -> list[tuple[float, float]]:
        if (end - start) / step + 1 > MAX_POINTS:
            raise ValueError(f"more than {MAX_POINTS} points asked for")
        url = self._base.joinpath("api/v1/query_range")
        form = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            async with self._client().post(
                url,
                data=form,
                headers=self._headers,
                ssl=self._ssl if self._ssl is not None else True,
                allow_redirects=False,
            ) as response:
                body = await response.content.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ProviderError(
                        f"{self.name}: answer larger than {MAX_RESPONSE_BYTES} bytes"
                    )
                if response.status != 200:
                    raise ProviderError(f"{self.name}: HTTP {response.status}{_why(body)}")
        except TimeoutError:
            raise ProviderError(
                f"{self.name}: no answer within {self._spec.query_timeout_s:g} s"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            what = (
                "connection refused"
                if isinstance(cause, ConnectionRefusedError)
                else (cause.strerror or str(cause)).lower()
            )
            raise ProviderError(f"{self.name}: {what}") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        try:
            return parse_matrix(body)
        except QueryError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise ProviderError(f"{self.name}: unreadable answer ({exc})") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _why(body: bytes) -> str:
    """Prometheus's own error text, short, when the body carries one."""
    with contextlib.suppress(ValueError, AttributeError):
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return f" ({doc.get('errorType', 'error')}: {doc['error'][:300]})"
    return ""


def _tls_context(credentials: Mapping[str, str]) -> ssl.SSLContext:
    ca = credentials.get("tls_ca")
    context = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
    cert, key = credentials.get("tls_cert"), credentials.get("tls_key")
    if cert and key:
        # ssl loads a client certificate only from files: a private directory, gone at once.
        with tempfile.TemporaryDirectory(prefix="tether-verify-") as folder:
            cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            for path, text in ((cert_path, cert), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            context.load_cert_chain(cert_path, key_path)
    return context
