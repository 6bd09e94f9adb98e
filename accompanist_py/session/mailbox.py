"""The data and choice messages of one session at one role, in order per sender.

Streams are ordered per (session, sender): the n-th receive from a sender takes the message
with seq n, whenever it arrived. Early arrivals wait in a buffer; duplicates never get here
(the node drops them against the inbox). Choices carried in any message's headers are learned
on arrival, not on consumption: a role that joins after a decision must know it before its
first receive. That cannot make replay diverge: every message received before a crash is in
the inbox after it, so a choice known in the first run is known in the replay.
"""

from __future__ import annotations

import asyncio
from typing import Any

from accompanist_py.errors import ReceiveTimeoutError, ReplayDivergenceError
from accompanist_py.message import Kind, Message, decode_value, encode_value


class Mailbox:
    """Sequence numbers out, ordered receives in, and the choices this role knows."""

    def __init__(self, session_id: str, role: str, receive_timeout_s: float) -> None:
        self.session_id = session_id
        self.role = role
        self.receive_timeout_s = receive_timeout_s
        self.choices: dict[str, bytes] = {}
        self.sent_to: set[str] = set()
        self._send_seq: dict[str, int] = {}
        self._recv_seq: dict[str, int] = {}
        self._buffer: dict[tuple[str, int], Message] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[Message]] = {}

    def put(self, msg: Message) -> None:
        """A message arrived (it is, or is being made, durable in the inbox)."""
        for cid, value in msg.headers.get("c", {}).items():
            self.choices.setdefault(cid, value)
        if msg.kind is Kind.CONTROL:
            return
        key = (msg.sender, msg.seq)
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)
        else:
            self._buffer[key] = msg

    def learn_choice(self, choice_id: str, value: Any) -> None:
        self.choices[choice_id] = encode_value(value)

    def next_seq(self, receiver: str) -> int:
        """The seq of the next message to `receiver` (which this role then takes part with)."""
        seq = self._send_seq.get(receiver, 0)
        self._send_seq[receiver] = seq + 1
        self.sent_to.add(receiver)
        return seq

    async def take(self, sender: str, kind: Kind) -> Any:
        """The value of the next message from `sender`, waiting at most the receive timeout."""
        seq = self._recv_seq.get(sender, 0)
        self._recv_seq[sender] = seq + 1
        key = (sender, seq)
        msg = self._buffer.pop(key, None)
        if msg is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[key] = waiter
            timeout = self.receive_timeout_s
            try:
                async with asyncio.timeout(timeout):
                    msg = await waiter
            except TimeoutError:
                raise ReceiveTimeoutError(
                    f"role {self.role!r} of session {self.session_id!r} waited {timeout:g}s for "
                    f"message (sender={sender!r}, seq={seq})"
                ) from None
            finally:
                self._waiters.pop(key, None)
        if msg.kind is not kind:
            raise ReplayDivergenceError(
                f"role {self.role!r} expected a {kind.value} message from {sender!r} (seq {seq}) "
                f"but got {msg.kind.value}: the roles disagree on the choreography's path"
            )
        return decode_value(msg.payload)
