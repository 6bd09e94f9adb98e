"""The sidecar's listening socket, guarded: TLS, and bounds on who may hold a connection.

aiohttp bounds a request once it is read (body size, header sizes) and closes idle keep-alive
connections, but it lets any number of connections sit in a TLS handshake or trickle their
headers for as long as they like (a slowloris). Here every connection must finish its TLS
handshake and its first request's headers within `header_s`; at most `max_connections` are
open at once; and one certified peer (or client) holds at most `max_connections_per_peer`.
Connections without a certificate are bounded by the total only: on loopback, every caller
shares one address, so counting by address would refuse honest load.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from accompanist_py.sidecar.config import Limits
from accompanist_py.tls import peer_uris

log = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"


class _Gate:
    """Counts the open connections, in total and by certified identity."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open = 0
        self.by_peer: Counter[tuple[str, ...]] = Counter()
        self.refused = 0  # connections closed for a limit or a timeout, for the log and tests

    def admit(self, transport: asyncio.BaseTransport) -> tuple[str, ...] | None:
        """The connection's identity key if it may stay, else None (refused and counted)."""
        key = tuple(sorted(peer_uris(transport.get_extra_info("peercert"))))
        most = self.limits.max_connections
        if self.open >= most:
            self._refuse(f"{self.open} connections open, the limit is {most}")
            return None
        if key and self.by_peer[key] >= self.limits.max_connections_per_peer:
            self._refuse(f"{key[0]} already holds {self.by_peer[key]} connections")
            return None
        self.open += 1
        if key:
            self.by_peer[key] += 1
        return key

    def release(self, key: tuple[str, ...]) -> None:
        self.open -= 1
        if key:
            self.by_peer[key] -= 1
            if not self.by_peer[key]:
                del self.by_peer[key]

    def _refuse(self, why: str) -> None:
        self.refused += 1
        log.warning("connection refused: %s", why)


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: admission, and the header deadline."""

    def __init__(self, inner: asyncio.Protocol, gate: _Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.key: tuple[str, ...] | None = None
        self.transport: asyncio.Transport | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes seen, for an end of headers split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.key = self.gate.admit(transport)
        if self.key is None:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.deadline = asyncio.get_running_loop().call_later(
            self.gate.limits.header_s, self._too_slow
        )
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.gate._refuse(f"no complete request within {self.gate.limits.header_s:g}s")
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.key is None:
            return
        if self.deadline is not None:
            if _END_OF_HEADERS in self.tail + data:
                self.deadline.cancel()
                self.deadline = None
            else:
                self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.key is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.key is None:
            return
        self.gate.release(self.key)
        self.key = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are guarded as the module docstring says."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: Limits,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self.gate = _Gate(limits)
        self._limits = limits

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when asked for port 0)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], Any] = lambda: _Guarded(server(), self.gate)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._limits.header_s if self._ssl_context else None,
            # A listen queue as deep as the connections we admit: with asyncio's default of 100,
            # a burst of connects overflows it, the kernel answers with SYN cookies and drops
            # the final ACKs it has no room for, and a client that sends nothing first believes
            # it is connected to a server that never heard of it (the kernel clamps this to
            # net.core.somaxconn).
            backlog=self._limits.max_connections,
            reuse_address=True,
        )


__all__ = ["GuardedSite"]
