"""A round-robin TCP load balancer for tests: each client connection goes to the next
upstream that accepts it, as a layer-4 balancer with health checks by connect does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools


class Balancer:
    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = upstreams
        self._next = itertools.cycle(range(len(upstreams)))
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Closing both ends lets every pipe finish by itself (no cancelled handler tasks).
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            for _ in range(len(self.upstreams)):
                host, port = self.upstreams[next(self._next)]
                try:
                    up_reader, up_writer = await asyncio.open_connection(host, port)
                except OSError:
                    continue  # that replica is down: the next one
                self._writers.add(up_writer)
                await asyncio.gather(
                    _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
                )
                return
        finally:
            writer.close()
            self._writers.discard(writer)
            self._conns.discard(task)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    finally:
        with contextlib.suppress(Exception):
            dst.close()
