"""A real Prometheus (the Debian package's binary) and tiny exporters whose counters the test
drives, all on loopback with free ports and temporary directories."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.e2e.harness import Proc

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counter:
    """A counter growing at a rate the test sets, read at each scrape: a smooth rate()."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._value = 0.0
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def _advance(self) -> None:
        now = time.monotonic()
        self._value += self._rate * (now - self._at)
        self._at = now

    def value(self) -> float:
        with self._lock:
            self._advance()
            return self._value

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._advance()
            self._rate = rate


class Exporter:
    """``app_requests_total`` and ``app_errors_total`` on /metrics."""

    def __init__(self, requests_per_s: float, errors_per_s: float) -> None:
        self.requests = Counter(requests_per_s)
        self.errors = Counter(errors_per_s)
        # The error rates set over HTTP, in order.
        self.changes: list[float] = []
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    "# TYPE app_requests_total counter\n"
                    f"app_requests_total {exporter.requests.value()}\n"
                    "# TYPE app_errors_total counter\n"
                    f"app_errors_total {exporter.errors.value()}\n"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                # POST /errors?rate=R: what a deployment (or its rollback) does to the app.
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                exporter.errors.set_rate(float(query["rate"][0]))
                exporter.changes.append(float(query["rate"][0]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def set_errors_command(self, rate: float) -> str:
        """A shell command that sets the error rate, for a task's script."""
        url = f"http://127.0.0.1:{self.port}/errors?rate={rate}"
        code = f"import urllib.request as u; u.urlopen(u.Request('{url}', method='POST'))"
        return f'{sys.executable} -c "{code}"'

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.shutdown()
            self._server.server_close()


class Prometheus:
    def __init__(self, root: Path, jobs: dict[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "prometheus.yml"
        scrape = [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in jobs.items()
        ]
        doc = {"global": {"scrape_interval": "1s"}, "scrape_configs": scrape}
        config.write_text(json.dumps(doc))  # JSON is YAML
        self.proc = Proc(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
        )

    async def start(self) -> None:
        await self.proc.start()

    def query(self, promql: str) -> list[dict[str, object]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)["data"]["result"]  # type: ignore[no-any-return]

    async def wait_for(self, promql: str, check: object, what: str, timeout: float = 60) -> None:
        """Until ``check(result)`` holds: Prometheus's own answer is the event."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                result = await asyncio.to_thread(self.query, promql)
                if check(result):  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"prometheus: {what} not seen in {timeout:g} s\n{self.proc.tail()}"
                )
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        await self.proc.stop()


def scalar(result: Sequence[dict[str, object]]) -> float | None:
    if len(result) != 1:
        return None
    value = result[0]["value"]
    assert isinstance(value, list)
    return float(value[1])
