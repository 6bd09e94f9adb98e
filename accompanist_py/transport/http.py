"""HTTP transport between sidecars, with aiohttp.

One keep-alive connection pool per peer. A batch of messages is one POST of msgpack to the
peer's `/messages`; the 200 answer is the acknowledgement, sent only after the peer has the
messages durably, and lists (msgpack) the messages it refused for good. 4xx means the peer
refuses the whole batch; anything else is retryable.
The receiving side is served by the sidecar's HTTP app, which calls `deliver`.

With `tls`, every connection is mutual TLS with the deployment CA, and the sender asks for
`role_host(receiver)`: a server not certified for the receiving role fails the handshake,
before any byte of a message leaves (see accompanist_py/tls.py).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp
import msgpack

from accompanist_py.message import Message, encode_batch
from accompanist_py.tls import TLSFiles, role_host
from accompanist_py.transport import Deliver, DeliveryFailed, MessageRejected, OnReady, Refusals

CONTENT_TYPE = "application/msgpack"


class HttpTransport:
    """Sends to peers by role, through the base URL of the sidecar hosting each role."""

    def __init__(
        self,
        name: str,
        peers: dict[str, str],
        *,
        timeout_s: float = 10.0,
        pool_per_peer: int = 64,
        tls: TLSFiles | None = None,
    ) -> None:
        self.name = name
        self.peers = {role: url.rstrip("/") for role, url in peers.items()}
        self.tls = tls
        self._ssl: ssl.SSLContext | None = tls.client_context() if tls is not None else None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._pool = pool_per_peer
        self._session: aiohttp.ClientSession | None = None
        self._roles: list[str] = []

    async def start(self, roles: list[str], deliver: Deliver, on_ready: OnReady) -> None:
        self._roles = list(roles)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._pool, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    def _tls_for(self, receiver: str) -> dict[str, Any]:
        """The request options that make the handshake prove `receiver`'s certificate."""
        if self.tls is None:
            return {}
        return {"ssl": self._ssl, "server_hostname": role_host(receiver, self.tls.trust_domain)}

    def _url(self, receiver: str, path: str) -> str:
        try:
            return self.peers[receiver] + path
        except KeyError:
            raise MessageRejected(f"no peer address configured for role {receiver!r}") from None

    async def send(self, receiver: str, batch: list[Message]) -> Refusals:
        assert self._session is not None, "transport not started"
        url = self._url(receiver, "/messages")
        try:
            async with self._session.post(
                url,
                data=encode_batch(batch),
                headers={"Content-Type": CONTENT_TYPE},
                **self._tls_for(receiver),
            ) as resp:
                if resp.status == 200:
                    return [tuple(r) for r in msgpack.unpackb(await resp.read())]
                text = (await resp.text())[:300]
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryFailed(f"{url}: {exc.__class__.__name__}: {exc}") from exc
        if 400 <= resp.status < 500:
            raise MessageRejected(f"{url} refused the batch ({resp.status}): {text}")
        raise DeliveryFailed(f"{url} answered {resp.status}: {text}")

    async def announce_ready(self) -> None:
        assert self._session is not None
        by_url = {url: role for role, url in sorted(self.peers.items())}

        async def tell(url: str) -> None:
            try:
                async with self._session.post(  # type: ignore[union-attr]
                    url + "/ready",
                    json={"sidecar": self.name, "roles": self._roles},
                    **self._tls_for(by_url[url]),
                ) as resp:
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass  # a peer that is down will find our messages when it recovers

        await asyncio.gather(*(tell(u) for u in by_url))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
