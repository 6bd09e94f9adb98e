"""How messages move between nodes: one small interface, two implementations.

A transport sends a batch of messages to the node hosting a role and reports, by returning,
that the receiver has them durably (the acknowledgement), together with the messages it refused
for good (malformed, for a role it does not host ...), as (index, reason) pairs. It raises
`DeliveryFailed` for a failure worth retrying (peer down, timeout) and `MessageRejected` when
the receiver refuses the whole batch. Retrying, backoff and
resending belong to the node's outbox, not to transports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from accompanist_py.message import Message

Refusals = list[tuple[int, str]]
"""Messages of a batch refused for good: (index in the batch, reason)."""

Deliver = Callable[[list[Message]], Awaitable[Refusals]]
"""The receiving node's entry point: returns, once the rest are durable, what it refused."""

OnReady = Callable[[list[str]], None]
"""Called when a peer announces it (re)started, with the roles it hosts."""


class DeliveryFailed(Exception):
    """The batch may not have arrived; sending it again is safe and expected."""


class MessageRejected(Exception):
    """The receiver refused the batch for good (malformed, unknown role or choreography)."""


class Transport(Protocol):
    """Moves message batches between nodes."""

    async def start(self, roles: list[str], deliver: Deliver, on_ready: OnReady) -> None:
        """Begin receiving for `roles`; `deliver` gets every incoming batch."""

    async def send(self, receiver: str, batch: list[Message]) -> Refusals:
        """Deliver `batch` (all for role `receiver`); return, once acknowledged, the refusals."""

    async def announce_ready(self) -> None:
        """Tell every peer this node is up, so they resend pending messages at once."""

    async def close(self) -> None:
        """Stop sending and receiving."""


__all__ = ["Deliver", "DeliveryFailed", "MessageRejected", "OnReady", "Refusals", "Transport"]
