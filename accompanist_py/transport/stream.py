"""Stream transport: one persistent WebSocket per peer, pipelined batches, async acks.

The HTTP transport pays for a whole request and response per batch: header parsing, a request
object, a handler call, on both sides. Here each sidecar keeps one WebSocket (an upgraded HTTP
connection on the same aiohttp server) to each peer; a batch is one binary frame
`[batch_id, messages]`, and the peer answers with a frame `[batch_id, refused]` once the batch is
durable (`refused` lists the messages it refused for good), or `[batch_id, error]` if it refuses
the whole batch; a batch it cannot handle at all closes the connection (sent again later).
Many batches are in flight at once, up to the receiver's `max_frames_in_flight`: beyond it
the receiver stops reading, and TCP pushes back. A receiver that is full (admission control)
answers `[batch_id, {"retry": reason}]`: nothing was stored, the sender tries again later.
A broken connection fails every batch in flight as retryable; the outbox resends them, and the
receiver drops whatever it already had. `python -m bench.microbench` compares both transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import aiohttp
import msgpack
from aiohttp import web

from accompanist_py.errors import Overloaded
from accompanist_py.message import Message, messages_from_rows
from accompanist_py.tls import TLSFiles
from accompanist_py.transport import Deliver, DeliveryFailed, MessageRejected, Refusals
from accompanist_py.transport.http import HttpTransport

log = logging.getLogger(__name__)

STREAM_PATH = "/stream"
_MAX_ACK_BYTES = 4 * 1024 * 1024  # an acknowledgement lists refusals: small, but bounded


class _Link:
    """The WebSocket to one peer, and the batches waiting for its acknowledgement."""

    def __init__(self) -> None:
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        # Batches in flight on the current connection only: each connection has its own, so
        # a closing old one cannot fail batches already sent on its successor.
        self.pending: dict[int, asyncio.Future[Refusals]] = {}
        self.connecting = asyncio.Lock()


class StreamTransport(HttpTransport):
    """Sends over one WebSocket per peer; `/ready` and the receiving endpoint as in HTTP."""

    def __init__(
        self,
        name: str,
        peers: dict[str, str],
        *,
        timeout_s: float = 10.0,
        tls: TLSFiles | None = None,
    ) -> None:
        super().__init__(name, peers, timeout_s=timeout_s, tls=tls)
        self._links: dict[str, _Link] = {}  # by peer URL: roles of one sidecar share a link
        self._ids = itertools.count()
        self._ack_timeout = timeout_s

    async def _link(self, receiver: str) -> _Link:
        url = self._url(receiver, "")
        link = self._links.setdefault(url, _Link())
        if link.ws is not None and not link.ws.closed:
            return link
        async with link.connecting:
            if link.ws is None or link.ws.closed:
                assert self._session is not None, "transport not started"
                try:
                    link.ws = await self._session.ws_connect(
                        url + STREAM_PATH,
                        heartbeat=5.0,
                        max_msg_size=_MAX_ACK_BYTES,
                        compress=0,
                        **self._tls_for(receiver),
                    )
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise DeliveryFailed(f"{url}{STREAM_PATH}: {exc}") from exc
                link.pending = {}
                link.reader = asyncio.create_task(self._read(url, link.pending, link.ws))
        return link

    async def _read(
        self,
        url: str,
        pending: dict[int, asyncio.Future[Refusals]],
        ws: aiohttp.ClientWebSocketResponse,
    ) -> None:
        try:
            async for frame in ws:
                if frame.type is not aiohttp.WSMsgType.BINARY:
                    continue
                batch_id, answer = msgpack.unpackb(frame.data)
                fut = pending.pop(batch_id, None)
                if fut is None or fut.done():
                    continue
                if isinstance(answer, list):
                    fut.set_result([tuple(r) for r in answer])
                elif isinstance(answer, dict):
                    fut.set_exception(DeliveryFailed(f"{url} is full: {answer.get('retry')}"))
                else:
                    fut.set_exception(MessageRejected(f"{url} refused the batch: {answer}"))
        except Exception:  # a frame we cannot read: drop this connection, resend on a new one
            log.exception("bad acknowledgement from %s", url)
        finally:
            await ws.close()
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(DeliveryFailed(f"{url}: stream closed"))
            pending.clear()

    async def send(self, receiver: str, batch: list[Message]) -> Refusals:
        link = await self._link(receiver)
        batch_id = next(self._ids)
        fut: asyncio.Future[Refusals] = asyncio.get_running_loop().create_future()
        pending = link.pending
        pending[batch_id] = fut
        frame = msgpack.packb([batch_id, [m.to_wire() for m in batch]], use_bin_type=True)
        try:
            await link.ws.send_bytes(frame)  # type: ignore[union-attr]
            async with asyncio.timeout(self._ack_timeout):
                return await fut
        except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError) as exc:
            raise DeliveryFailed(f"{receiver}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            pending.pop(batch_id, None)

    async def close(self) -> None:
        for link in self._links.values():
            if link.ws is not None:
                await link.ws.close()
            if link.reader is not None:
                link.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link.reader
        await super().close()


async def serve_stream(
    request: web.Request,
    deliver: Deliver,
    *,
    max_frame_bytes: int = 8 * 1024 * 1024,
    max_frames_in_flight: int = 64,
) -> web.WebSocketResponse:
    """The receiving end: deliver each batch, acknowledge it once durable.

    A frame over `max_frame_bytes` closes the connection (1009); with `max_frames_in_flight`
    batches not yet acknowledged, the next frame is not read until one is.
    """
    ws = web.WebSocketResponse(max_msg_size=max_frame_bytes, compress=False, heartbeat=5.0)
    await ws.prepare(request)
    tasks: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(max_frames_in_flight)

    async def handle(data: bytes) -> None:
        try:
            batch_id, rows = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:  # a frame we cannot even number: drop the connection
            log.error("malformed stream frame: %s", exc)
            await ws.close()
            return
        answer: Refusals | str | dict[str, str]
        try:
            answer = await deliver(messages_from_rows(rows))
        except ValueError as exc:  # the batch itself is malformed
            answer = str(exc)
        except Overloaded as exc:
            answer = {"retry": str(exc)}
        except Exception:  # not the sender's fault: no ack, the connection goes, it resends
            log.exception("delivering a batch failed")
            await ws.close()
            return
        if not ws.closed:
            await ws.send_bytes(msgpack.packb([batch_id, answer]))

    async for frame in ws:
        if frame.type is aiohttp.WSMsgType.BINARY:
            await room.acquire()  # backpressure: the next frame waits for an acknowledgement
            task = asyncio.create_task(handle(frame.data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: room.release())
    await asyncio.gather(*tasks, return_exceptions=True)
    return ws


__all__ = ["STREAM_PATH", "StreamTransport", "serve_stream"]
