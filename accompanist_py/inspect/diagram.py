"""What a sequence diagram of a timeline draws, independent of how it is drawn.

`steps` turns a merged `Timeline` into the diagram's vocabulary, in order: a `Message` (an
arrow from sender to receiver, drawn when it was sent), a `Call` (a service call at a role:
its operation, status, attempts and latency) and a `Mark` (anything else that happens at one
role: started, committed, refused, compensated, abort, restart, replay, finished,
truncated). The text, Mermaid and SVG renderers all draw these steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accompanist_py.inspect.timeline import RECEIVED, SENT, Timeline

CONTROL = frozenset({"done", "abort", "decision"})  # the outcome protocol's messages


@dataclass(frozen=True, slots=True)
class Message:
    at: float
    sender: str
    receiver: str
    seq: Any
    message: str
    delay_ms: float | None  # None: not seen at the receiver, or its send not seen
    seen_sent: bool
    seen_received: bool
    observed: bool  # the events of both ends were fetched

    @property
    def label(self) -> str:
        return f"{self.message} #{self.seq}"

    @property
    def control(self) -> bool:
        return self.message in CONTROL


@dataclass(frozen=True, slots=True)
class Call:
    at: float
    role: str
    operation: str
    status: str | None  # None: the call never ended (the node died during it)
    attempts: int | None
    latency_ms: float | None
    end_at: float | None

    @property
    def label(self) -> str:
        if self.status is None:
            return f"{self.operation}: no answer recorded"
        tries = f", {self.attempts} attempts" if self.attempts and self.attempts > 1 else ""
        return f"{self.operation} -> {self.status} {_ms(self.latency_ms)}{tries}"


@dataclass(frozen=True, slots=True)
class Mark:
    at: float
    role: str
    kind: str
    text: str


Step = Message | Call | Mark


def steps(timeline: Timeline) -> list[Step]:
    """The diagram's steps for `timeline`, in its order."""
    entries = timeline.entries
    out: list[Step] = []
    ended: set[int] = set()  # call_end entries already drawn with their call_start
    for i, e in enumerate(entries):
        f = e.fields
        if e.kind == SENT:
            other = entries[e.match] if e.match is not None else None
            delay = (other.at - e.at) * 1000 if other is not None else None
            out.append(
                Message(
                    e.at,
                    e.role,
                    f.get("peer", "?"),
                    f.get("seq"),
                    f.get("message", "?"),
                    delay,
                    True,
                    other is not None,
                    f.get("peer") in timeline.nodes,
                )
            )
        elif e.kind == RECEIVED:
            if e.match is None:
                out.append(
                    Message(
                        e.at,
                        f.get("peer", "?"),
                        e.role,
                        f.get("seq"),
                        f.get("message", "?"),
                        None,
                        False,
                        True,
                        f.get("peer") in timeline.nodes,
                    )
                )
        elif e.kind == "call_start":
            end = _call_end(entries, i)
            if end is None:
                out.append(Call(e.at, e.role, f.get("operation", "?"), None, None, None, None))
            else:
                ended.add(end)
                g = entries[end]
                out.append(
                    Call(
                        e.at,
                        e.role,
                        f.get("operation", "?"),
                        g.fields.get("status"),
                        g.fields.get("attempts"),
                        g.fields.get("latency_ms"),
                        g.at,
                    )
                )
        elif e.kind == "call_end":
            if i not in ended:
                out.append(
                    Call(
                        e.at,
                        e.role,
                        f.get("operation", "?"),
                        f.get("status"),
                        f.get("attempts"),
                        f.get("latency_ms"),
                        e.at,
                    )
                )
        else:
            out.append(Mark(e.at, e.role, e.kind, describe(e.kind, f)))
    return out


def _call_end(entries: list[Any], start: int) -> int | None:
    """The call_end of the call_start at `start`: the role's next call event, if an end."""
    role = entries[start].role
    for j in range(start + 1, len(entries)):
        e = entries[j]
        if e.role != role:
            continue
        if e.kind == "call_end" and e.fields.get("operation") == entries[start].fields.get(
            "operation"
        ):
            return j
        if e.kind in ("call_start", "call_end", "restart"):
            return None
    return None


TEMPLATES = {
    "committed": "committed {transaction}",
    "refused": "REFUSED {transaction}: {reason}",
    "compensated": "COMPENSATED {transaction} ({operation})",
    "abort": "ABORT: {reason} (origin {origin}{failed})",
    "restart": "RESTART #{restarts} (was {state})",
    "replay": "REPLAY: {steps} steps, {received} messages from the store",
    "finished": "finished: {state}",
    "truncated": "truncated: no events after {limit}",
}


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def describe(kind: str, f: dict[str, Any]) -> str:
    """One line for an event that is not a message or a call."""
    if kind == "started":
        by = f.get("by")
        if f.get("origin") == "client":
            return f"started by client {by}" if by else "started by a client"
        return f"started by {by}'s message"
    fields = _Fields(f, failed=", failed" if f.get("failed") else "")
    return TEMPLATES.get(kind, kind + " {fields}").format_map(_Fields(fields, fields=f))


def _ms(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


__all__ = ["Call", "Mark", "Message", "Step", "describe", "steps"]
