"""In-memory transport: every node in one process, for tests and `run_local`.

A `MemoryNetwork` connects the nodes; optional faults (duplicates, reordering delays, lost
acknowledgements) exercise the same dedup and resend paths as a real network.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from accompanist_py.errors import Overloaded
from accompanist_py.message import Message
from accompanist_py.transport import Deliver, DeliveryFailed, OnReady, Refusals


@dataclass
class NetworkFaults:
    """Faults injected on every send: probabilities in [0, 1], delays in seconds."""

    duplicate: float = 0.0  # deliver the batch twice
    max_delay_s: float = 0.0  # random delay before delivery: reorders concurrent sends
    lose_ack: float = 0.0  # deliver, then report failure so the sender resends
    seed: int = 0


class MemoryNetwork:
    """The wiring between in-process nodes."""

    def __init__(self, faults: NetworkFaults | None = None) -> None:
        self.faults = faults or NetworkFaults()
        self._rng = random.Random(self.faults.seed)
        self._nodes: dict[str, tuple[Deliver, OnReady]] = {}

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)

    async def _send(self, receiver: str, batch: list[Message]) -> Refusals:
        target = self._nodes.get(receiver)
        if target is None:
            raise DeliveryFailed(f"no node hosts role {receiver!r} (yet)")
        f = self.faults
        if f.max_delay_s:
            await asyncio.sleep(self._rng.uniform(0, f.max_delay_s))
        try:
            refused = await target[0](batch)
        except Overloaded as exc:
            raise DeliveryFailed(f"{receiver} is full: {exc}") from exc
        if f.duplicate and self._rng.random() < f.duplicate:
            await target[0](list(batch))
        if f.lose_ack and self._rng.random() < f.lose_ack:
            raise DeliveryFailed("acknowledgement lost (injected)")
        return refused


class MemoryTransport:
    """One node's attachment to a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork) -> None:
        self._network = network
        self._roles: list[str] = []

    async def start(self, roles: list[str], deliver: Deliver, on_ready: OnReady) -> None:
        self._roles = list(roles)
        for r in roles:
            self._network._nodes[r] = (deliver, on_ready)

    async def send(self, receiver: str, batch: list[Message]) -> Refusals:
        return await self._network._send(receiver, batch)

    async def announce_ready(self) -> None:
        notified = set()
        for role, (_, on_ready) in list(self._network._nodes.items()):
            if role not in self._roles and id(on_ready) not in notified:
                notified.add(id(on_ready))
                on_ready(self._roles)

    async def close(self) -> None:
        for r in self._roles:
            self._network._nodes.pop(r, None)
