"""The sending half of durable messaging: resend every message until it is acknowledged.

Messages wait in one queue per receiving role. Up to `max_inflight` senders per receiver drain
it, each taking up to `max_batch` messages per request: one message per request when idle
(lowest latency), batches under load (highest throughput). A failed request puts its messages
back and backs off (capped, exponential, per receiver); a peer announcing that it has
restarted cuts the backoff short. Acknowledged messages are marked in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from accompanist_py.backoff import Backoff
from accompanist_py.message import Message
from accompanist_py.transport import DeliveryFailed, MessageRejected, Transport

log = logging.getLogger(__name__)


@dataclass
class _Lane:
    """Everything queued for one receiving role."""

    queue: deque[Message] = field(default_factory=deque)
    lingering: list[Message] = field(default_factory=list)
    linger_timer: asyncio.TimerHandle | None = None
    senders: int = 0
    failures: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Outbox:
    """Delivers messages at least once, in batches, with backoff per receiver."""

    def __init__(
        self,
        transport: Transport,
        on_acked: Callable[[list[Message]], None],
        on_rejected: Callable[[list[Message], str], None],
        *,
        backoff: Backoff,
        max_batch: int = 64,
        max_inflight: int = 16,
    ) -> None:
        self._transport = transport
        self._on_acked = on_acked
        self._on_rejected = on_rejected
        self._backoff = backoff
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def waiting(self) -> dict[str, int]:
        """Messages queued per receiving role (an unreachable peer's grow)."""
        return {r: len(lane.queue) + len(lane.lingering) for r, lane in self._lanes.items()}

    def push(self, msg: Message, linger_s: float = 0.0) -> None:
        """Queue `msg` for delivery (it is already durable in the store, if the store is).

        With `linger_s`, the message may wait that long to ride along with a later one to the
        same receiver: for messages off the critical path, to save requests under load.
        """
        lane = self._lanes.setdefault(msg.receiver, _Lane())
        if linger_s > 0:
            lane.lingering.append(msg)
            if lane.linger_timer is None:
                lane.linger_timer = asyncio.get_running_loop().call_later(
                    linger_s, self._flush_lingering, msg.receiver, lane
                )
            return
        if lane.lingering:
            self._release_lingering(lane)
        lane.queue.append(msg)
        self._ensure_sender(msg.receiver, lane)

    def _release_lingering(self, lane: _Lane) -> None:
        lane.queue.extend(lane.lingering)
        lane.lingering.clear()
        if lane.linger_timer is not None:
            lane.linger_timer.cancel()
            lane.linger_timer = None

    def _flush_lingering(self, receiver: str, lane: _Lane) -> None:
        lane.linger_timer = None
        if lane.lingering:
            self._release_lingering(lane)
            self._ensure_sender(receiver, lane)

    def _ensure_sender(self, receiver: str, lane: _Lane) -> None:
        if lane.senders < self._max_inflight and not self._closed:
            lane.senders += 1
            task = asyncio.create_task(self._drain(receiver, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def wake(self, roles: list[str]) -> None:
        """Peers hosting `roles` restarted: retry now instead of waiting out the backoff."""
        for r in roles:
            lane = self._lanes.get(r)
            if lane is not None:
                lane.failures = 0
                lane.wake.set()

    async def _drain(self, receiver: str, lane: _Lane) -> None:
        try:
            while lane.queue and not self._closed:
                batch = [lane.queue.popleft()]
                while lane.queue and len(batch) < self._max_batch:
                    batch.append(lane.queue.popleft())
                try:
                    refused = await self._transport.send(receiver, batch)
                except (DeliveryFailed, MessageRejected) as exc:
                    if isinstance(exc, MessageRejected):
                        log.error("%s refused %d message(s): %s", receiver, len(batch), exc)
                        self._on_rejected(batch, str(exc))
                        continue
                    lane.queue.extendleft(reversed(batch))
                    lane.failures += 1
                    delay = self._backoff.delay(lane.failures)
                    log.debug("delivery to %s failed (%s); retry in %.2fs", receiver, exc, delay)
                    lane.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await lane.wake.wait()
                    continue
                except Exception:  # a transport bug must not lose the batch
                    log.exception("sending to %s failed unexpectedly", receiver)
                    lane.queue.extendleft(reversed(batch))
                    await asyncio.sleep(self._backoff.delay(lane.failures + 1))
                    continue
                lane.failures = 0
                bad = {index: reason for index, reason in refused}
                for index, reason in bad.items():
                    log.error("%s refused %s for good: %s", receiver, batch[index].key, reason)
                    self._on_rejected([batch[index]], reason)
                self._on_acked([m for i, m in enumerate(batch) if i not in bad])
        finally:
            lane.senders -= 1

    async def close(self) -> None:
        self._closed = True
        for lane in self._lanes.values():
            if lane.linger_timer is not None:
                lane.linger_timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
