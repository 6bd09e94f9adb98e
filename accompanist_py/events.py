"""The session timeline: what happened to one session at one role, in order, for people.

Every node records, per (session, role) it hosts, a short list of `Event`s: numbered from 1
(`n`), stamped with the node's wall clock (`t`, epoch seconds), of one `kind` of the
vocabulary below and carrying exactly that kind's fields. Events are for operators and the
inspector, never for the runtime: nothing reads them back to decide anything, so recording
one never waits. In the fault-tolerant mode each event is written through the store's group
commit right after the write it reports (the same commit, as a rule): after a crash the
timeline holds what the store holds, at most missing the very last events; an event is never
recorded twice for one fact, since replay serves what was durable without recording it again.

    kind          fields                                  when
    started       choreography, origin, by                the session's record is made here:
                                                          origin "client" (by: the client's
                                                          name or null) or "peer" (by: the
                                                          role whose message started it)
    sent          peer, seq, message                      a message is put in the outbox
    received      peer, seq, message                      a message is stored in the inbox
                                                          (message: data, choice, done, abort,
                                                          decision; QUERYs are not recorded)
    call_start    operation                               a call to the service begins
    call_end      operation, status, attempts, latency_ms it ends: status ok, refused (409),
                                                          error (other 4xx), unavailable
                                                          (past its deadline) or cancelled
    committed     transaction, operation                  a transaction's commit succeeded
    refused       transaction, operation, reason          its service refused it (409)
    compensated   transaction, operation                  its compensation succeeded
    abort         reason, failed, origin                  the session aborts here; origin: the
                                                          role whose failure or veto this role
                                                          learnt of, or "deadline"
    restart       restarts, state                         the node recovered the session
    replay        steps, received                         its part runs again: that many
                                                          journaled steps and inbox messages
                                                          are served from the store
    finished      state                                   the session ended here
    truncated     limit                                   `limit` events were recorded; no more

A compensation's service call is recorded like any other (call_start, call_end), then
`compensated`. A session records at most `limit` events per role, then one `truncated`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accompanist_py.store import Store

STARTED = "started"
SENT = "sent"
RECEIVED = "received"
CALL_START = "call_start"
CALL_END = "call_end"
COMMITTED = "committed"
REFUSED = "refused"
COMPENSATED = "compensated"
ABORT = "abort"
RESTART = "restart"
REPLAY = "replay"
FINISHED = "finished"
TRUNCATED = "truncated"

# The vocabulary: every kind and the fields it carries (and no others).
KINDS: dict[str, frozenset[str]] = {
    STARTED: frozenset({"choreography", "origin", "by"}),
    SENT: frozenset({"peer", "seq", "message"}),
    RECEIVED: frozenset({"peer", "seq", "message"}),
    CALL_START: frozenset({"operation"}),
    CALL_END: frozenset({"operation", "status", "attempts", "latency_ms"}),
    COMMITTED: frozenset({"transaction", "operation"}),
    REFUSED: frozenset({"transaction", "operation", "reason"}),
    COMPENSATED: frozenset({"transaction", "operation"}),
    ABORT: frozenset({"reason", "failed", "origin"}),
    RESTART: frozenset({"restarts", "state"}),
    REPLAY: frozenset({"steps", "received"}),
    FINISHED: frozenset({"state"}),
    TRUNCATED: frozenset({"limit"}),
}

DEFAULT_LIMIT = 256  # events per session and role


@dataclass(slots=True)  # not frozen: that would slow every event's creation down 3x
class Event:
    """One event of a session at a role (treat it as immutable)."""

    n: int  # 1, 2, ... per (session, role)
    t: float  # the node's wall clock, epoch seconds
    kind: str
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The event as served: {"n", "t", "kind", **fields}."""
        return {"n": self.n, "t": self.t, "kind": self.kind, **self.fields}


class Timeline:
    """Records the events of a node's sessions in its store; does nothing when disabled.

    Only sessions with a record here are recorded, and a finished one only while its timeline
    is still open: the transition to a final state may add its own events (the DECISION it
    sends, `finished`), but once the session's working state is forgotten its story is closed.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        *,
        enabled: bool = True,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        if limit <= 0:
            raise ValueError("the events limit must be positive")
        self.store = store
        self.clock = clock
        self.enabled = enabled
        self.limit = limit
        self.recorded = 0  # events recorded, for /metrics
        self.truncated = 0  # timelines that reached `limit`

    def record(self, session_id: str, role: str, kind: str, **fields: Any) -> None:
        """Append an event (its fields are `KINDS[kind]`); never waits for its write."""
        if not self.enabled:
            return
        rec = self.store.session(session_id, role)
        if rec is None:
            return
        count = self.store.event_count(session_id, role)
        if count == 0 and rec.finished:
            return  # closed (a durable store keeps a finished session's events on disk only)
        if count >= self.limit:
            if count > self.limit:
                return
            kind, fields = TRUNCATED, {"limit": self.limit}
            self.truncated += 1
        self.recorded += 1
        self.store.put_event(session_id, role, Event(count + 1, self.clock(), kind, fields))

    async def read(self, session_id: str, role: str) -> list[Event]:
        """The events of a session at a role, oldest first (a finished one's may be on disk)."""
        return await self.store.read_events(session_id, role)


__all__ = ["DEFAULT_LIMIT", "KINDS", "Event", "Timeline"]
