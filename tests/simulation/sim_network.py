"""The simulated network: a `Transport` per node incarnation, with seeded faults.

Every request takes a per-link latency plus random jitter each way, so concurrent sends
reorder. Batches are encoded to the wire format and decoded at the receiver, so nodes never
share message objects. Seeded faults, each drawn per request:

- loss of the request: nothing is delivered; the sender gets `DeliveryFailed` at its timeout;
- loss of the acknowledgement: delivered (durably), then `DeliveryFailed` at the timeout;
- duplication: the batch is delivered a second time, right behind or seconds later;
- stalls: the request is held up for seconds, overtaken by later ones, often past the
  sender's timeout (which then resends: the stale copy still arrives);
- partitions: a link, or all links of a node, cut for a window of virtual time; requests
  across it time out, acknowledgements across it are lost.

The receiver's `deliver` runs in its own task created in the RECEIVER's context (see
`sim_loop.OWNER`), as a server's request handler would: a crash of the receiver cancels it and
the sender gets `DeliveryFailed` (at once, a reset connection, or at its timeout, a silent
machine), while a crash of the sender leaves a delivery already under way to finish. A
request reaches whatever incarnation hosts the role when it arrives; a role that nobody hosts
refuses the connection. Announcing readiness calls each live peer's `on_ready` with the
announcing node's roles, after one hop. The harness's crash points are called at each step of
a request (sent, delivered, durable there, acknowledged), marked "-control" when the batch
holds control messages.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from sim_loop import Incarnation, SimLoop, SimTask, Trace, owner_context

from accompanist_py.message import Message, decode_batch, encode_batch
from accompanist_py.transport import Deliver, DeliveryFailed, OnReady, Refusals


@dataclass
class NetworkFaults:
    """Per-request fault probabilities, and the jitter added to every hop."""

    lose_request: float = 0.0
    lose_ack: float = 0.0
    duplicate: float = 0.0
    stall: float = 0.0  # a request held up in the network for seconds (overtaken, timed out)
    jitter_s: float = 0.0005


@dataclass(frozen=True)
class Partition:
    """Node `a` cut off from node `b` (or from every node if `b` is None) in [start, end)."""

    start: float
    end: float
    a: str
    b: str | None = None

    def cuts(self, x: str, y: str, now: float) -> bool:
        if not self.start <= now < self.end:
            return False
        if self.b is None:
            return self.a in (x, y)
        return {x, y} == {self.a, self.b}


def describe(batch: list[Message]) -> str:
    """A short, stable text for a batch: session/seq of each message."""
    return " ".join(f"{m.session}#{m.seq}" for m in batch)


class SimNetwork:
    """The wiring between simulated nodes; one `SimTransport` per node incarnation."""

    def __init__(
        self,
        loop: SimLoop,
        rng: random.Random,
        trace: Trace,
        *,
        timeout_s: float = 2.0,
        crash_point: Callable[[str, str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self.timeout_s = timeout_s
        self.faults = NetworkFaults()
        self.partitions: list[Partition] = []
        self.counters: Counter[str] = Counter()
        self._crash_point = crash_point  # (node, point): a moment where the node may crash
        self._hosts: dict[str, SimTransport] = {}  # role -> attachment of its live host
        self._latency: dict[tuple[str, str], float] = {}

    def attach(self, node: str, owner: Incarnation) -> SimTransport:
        return SimTransport(self, node, owner)

    def heal(self) -> None:
        """End every partition and stop injecting faults (latency and jitter stay)."""
        self.partitions = []
        self.faults = NetworkFaults(jitter_s=self.faults.jitter_s)

    def cut(self, x: str, y: str) -> bool:
        now = self.loop.time()
        return any(p.cuts(x, y, now) for p in self.partitions)

    def hop(self, x: str, y: str) -> float:
        """One-way delay between nodes x and y: the link's latency plus fresh jitter."""
        link = (x, y) if x < y else (y, x)
        base = self._latency.get(link)
        if base is None:
            base = self._latency[link] = self.rng.uniform(0.0002, 0.002)
        return base + self.rng.uniform(0.0, self.faults.jitter_s)

    # -- attachments -------------------------------------------------------------------------
    def _register(self, t: SimTransport) -> None:
        for r in t.roles:
            self._hosts[r] = t

    def _detach(self, t: SimTransport) -> None:
        for r in t.roles:
            if self._hosts.get(r) is t:
                del self._hosts[r]

    # -- requests ----------------------------------------------------------------------------
    async def _fail_at(self, deadline: float, why: str, text: str) -> NoReturn:
        self.counters[why] += 1
        self.trace("net", f"{why} {text}")
        delay = deadline - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        raise DeliveryFailed(f"{why} (simulated)")

    async def send(self, src: SimTransport, receiver: str, batch: list[Message]) -> Refusals:
        point = "-control" if any(m.seq < 0 for m in batch) else ""
        if self._crash_point is not None:
            self._crash_point(src.node, "send" + point)
        src.owner.check()
        loop = self.loop
        deadline = loop.time() + self.timeout_s
        text = f"{src.node}>{receiver} {describe(batch)}"
        dst = self._hosts.get(receiver)
        if dst is None:
            # Nobody listens for this role: the connection is refused after a round trip.
            self.counters["refused"] += 1
            self.trace("net", f"refused {text}")
            await asyncio.sleep(0.002)
            raise DeliveryFailed(f"no node hosts role {receiver!r} (simulated)")
        if self.cut(src.node, dst.node):
            await self._fail_at(deadline, "partitioned", text)
        f = self.faults
        if f.lose_request and self.rng.random() < f.lose_request:
            await self._fail_at(deadline, "lost-request", text)
        if f.stall and self.rng.random() < f.stall:
            self.counters["stalled"] += 1
            self.trace("net", f"stalled {text}")
            await asyncio.sleep(self.rng.uniform(0.5, 4.0))  # may outlast the sender's timeout
        else:
            await asyncio.sleep(self.hop(src.node, dst.node))
        dst = self._hosts.get(receiver)  # whoever hosts the role now that the request arrives
        if dst is None or self.cut(src.node, dst.node):
            await self._fail_at(deadline, "unreachable", text)
        wire = encode_batch(batch)
        self.counters["delivered"] += 1
        self.trace("net", f"deliver {text} to {dst.owner}")
        if self._crash_point is not None:
            self._crash_point(dst.node, "deliver" + point)
        task = dst.spawn_delivery(wire)
        if f.duplicate and self.rng.random() < f.duplicate:
            self.counters["duplicated"] += 1
            self.trace("net", f"duplicate {text}")
            # Mostly right behind the original; sometimes much later, after things moved on.
            late = self.rng.random() < 0.3
            delay = self.rng.uniform(0.5, 10.0) if late else self.hop(src.node, dst.node)
            loop.call_later(delay, self._deliver_copy, src.node, receiver, wire)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            await self._fail_at(deadline, "timeout", text)
        if task.cancelled() or task.exception() is not None:
            # The receiver died while handling it (or its deliver raised). A dead process's
            # connections are reset at once; a dead machine's just go silent.
            if self.rng.random() < 0.5:
                await self._fail_at(deadline, "silent", text)
            self.counters["reset"] += 1
            self.trace("net", f"reset {text}")
            await asyncio.sleep(self.hop(src.node, dst.node))
            raise DeliveryFailed("connection reset (simulated)")
        refused = task.result()
        if self._crash_point is not None:
            self._crash_point(dst.node, "delivered" + point)  # durable there, not yet acted on
        await asyncio.sleep(self.hop(src.node, dst.node))
        if self.cut(src.node, dst.node):
            await self._fail_at(deadline, "partitioned-ack", text)
        if f.lose_ack and self.rng.random() < f.lose_ack:
            await self._fail_at(deadline, "lost-ack", text)
        self.trace("net", f"ack {text} refused={refused}")
        if self._crash_point is not None:
            self._crash_point(src.node, "acked" + point)  # acknowledged, not yet marked so
        src.owner.check()
        return refused

    def _deliver_copy(self, sender: str, receiver: str, wire: bytes) -> None:
        dst = self._hosts.get(receiver)
        if dst is not None and not self.cut(sender, dst.node):
            self.trace("net", f"copy {sender}>{receiver} to {dst.owner}")
            dst.spawn_delivery(wire)  # nobody waits for its answer

    def announce(self, src: SimTransport) -> None:
        peers = {t.node: t for t in self._hosts.values() if t is not src}
        for name in sorted(peers):
            peer = peers[name]
            if self.cut(src.node, name):
                continue
            self.loop.call_later(
                self.hop(src.node, name),
                self._ready_at,
                peer,
                list(src.roles),
                context=owner_context(peer.owner),
            )

    def _ready_at(self, peer: SimTransport, roles: list[str]) -> None:
        if peer.owner.alive and peer.on_ready is not None:
            self.trace("net", f"ready {','.join(roles)} -> {peer.owner}")
            peer.on_ready(roles)


class SimTransport:
    """One node incarnation's attachment to the `SimNetwork` (the runtime's `Transport`)."""

    def __init__(self, network: SimNetwork, node: str, owner: Incarnation) -> None:
        self.network = network
        self.node = node
        self.owner = owner
        self.roles: list[str] = []
        self.deliver: Deliver | None = None
        self.on_ready: OnReady | None = None

    async def start(self, roles: list[str], deliver: Deliver, on_ready: OnReady) -> None:
        self.owner.check()
        self.roles = list(roles)
        self.deliver = deliver
        self.on_ready = on_ready
        self.network._register(self)

    async def send(self, receiver: str, batch: list[Message]) -> Refusals:
        return await self.network.send(self, receiver, batch)

    async def announce_ready(self) -> None:
        self.owner.check()
        self.network.announce(self)

    async def close(self) -> None:
        self.network._detach(self)

    def kill(self) -> None:
        """The node crashed: it stops listening at once."""
        self.network._detach(self)

    def spawn_delivery(self, wire: bytes) -> SimTask:
        """Run `deliver` for a batch as this node's request handler (a task it owns)."""
        assert self.deliver is not None
        deliver = self.deliver
        loop = self.network.loop

        async def handle() -> Refusals:
            self.owner.check()
            return await deliver(decode_batch(wire))

        task = loop.create_task(handle(), context=owner_context(self.owner))
        assert isinstance(task, SimTask)
        return task


__all__ = ["NetworkFaults", "Partition", "SimNetwork", "SimTransport"]
