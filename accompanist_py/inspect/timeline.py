"""One session's timeline across its roles: the events every sidecar serves, merged.

Each sidecar stamps its events with its own wall clock, so events of different nodes are
ordered by time only as far as their clocks agree. Messages say how far that is: a message's
`received` cannot precede its `sent`. The merge

1. matches each `sent` (sender, receiver = its peer, seq, message) with the `received` of the
   same key at the receiver, the k-th of one with the k-th of the other;
2. estimates one clock offset per node, only where some message arrived before it was sent:
   from the reference node (the initiator's), along the node pairs that exchanged messages,
   the offset is the middle of the interval the messages both ways allow (NTP's reasoning:
   the delays out and back are taken as alike), or the bound itself where messages went one
   way only; a last pass raises any receiver whose message still arrives early;
3. orders the events by corrected time, with each role's events kept in their own order and
   a `received` after its `sent` whatever the clocks say.

`Timeline.notes` says what was corrected. Times (`Entry.at`) are seconds since the
session's first event.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

SENT, RECEIVED = "sent", "received"
EPSILON_S = 1e-6  # a corrected message takes at least this long


@dataclass(frozen=True, slots=True)
class NodeEvents:
    """One sidecar's answer to `GET /sessions/{id}/events`."""

    node: str
    url: str
    roles: dict[str, list[dict[str, Any]]]


@dataclass(slots=True)
class Entry:
    """One event in the merged timeline."""

    role: str
    node: str
    n: int
    t: float  # the node's own clock
    kind: str
    fields: dict[str, Any]
    at: float = 0.0  # corrected, seconds since the session's first event
    match: int | None = None  # index of the matching sent/received entry

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "node": self.node,
            "n": self.n,
            "t": self.t,
            "at": round(self.at, 6),
            "kind": self.kind,
            "match": self.match,
            **self.fields,
        }


@dataclass
class Timeline:
    """A session's merged timeline (see the module docstring)."""

    session: str
    entries: list[Entry]
    roles: list[str]  # lifelines, in order of first appearance
    nodes: dict[str, str]  # role -> node that served its events
    offsets: dict[str, float]  # node -> seconds added to its clock
    notes: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # sidecar URL -> why

    @property
    def choreography(self) -> str | None:
        for e in self.entries:
            if e.kind == "started":
                return e.fields.get("choreography")
        return None

    def final_state(self, role: str) -> str:
        """The role's last `finished` state, or what is known of it otherwise."""
        state = None
        seen = False
        for e in self.entries:
            if e.role == role:
                seen = True
                if e.kind == "finished":
                    state = e.fields.get("state")
        if state is not None:
            return str(state)
        return "unfinished" if seen else "no events"

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "choreography": self.choreography,
            "roles": self.roles,
            "nodes": self.nodes,
            "offsets_s": self.offsets,
            "final": {r: self.final_state(r) for r in self.roles},
            "notes": self.notes,
            "unreachable": self.unreachable,
            "events": [e.to_json() for e in self.entries],
        }


def merge(
    session: str, answers: list[NodeEvents], unreachable: dict[str, str] | None = None
) -> Timeline:
    """Merge the sidecars' answers for `session` into one timeline."""
    entries: list[Entry] = []
    nodes: dict[str, str] = {}
    for answer in answers:
        for role, events in answer.roles.items():
            if role in nodes:  # two sidecars claim one role: keep the first answer
                continue
            nodes[role] = answer.node
            for ev in sorted(events, key=lambda e: e["n"]):
                fields = {k: v for k, v in ev.items() if k not in ("n", "t", "kind")}
                entries.append(Entry(role, answer.node, ev["n"], ev["t"], ev["kind"], fields))
    pairs = _match(entries)
    offsets, notes = _offsets(entries, pairs, nodes)
    ordered = _order(entries, pairs, offsets)
    position = {id(e): i for i, e in enumerate(ordered)}
    for s, r in pairs:
        entries[s].match, entries[r].match = position[id(entries[r])], position[id(entries[s])]
    start = min((e.t + offsets[e.node] for e in ordered), default=0.0)
    for e in ordered:
        e.at = e.t + offsets[e.node] - start
    notes += _unmatched(ordered, nodes)
    roles: list[str] = []
    for e in ordered:
        for r in (e.role, e.fields.get("peer") if e.kind in (SENT, RECEIVED) else None):
            if isinstance(r, str) and r not in roles:
                roles.append(r)
    return Timeline(session, ordered, roles, nodes, offsets, notes, dict(unreachable or {}))


def _match(entries: list[Entry]) -> list[tuple[int, int]]:
    """(sent index, received index) pairs: the k-th sent of a key with its k-th received."""
    sent: dict[tuple[Any, ...], deque[int]] = defaultdict(deque)
    for i, e in enumerate(entries):
        if e.kind == SENT:
            sent[
                (e.role, e.fields.get("peer"), e.fields.get("seq"), e.fields.get("message"))
            ].append(i)
    pairs = []
    for i, e in enumerate(entries):
        if e.kind == RECEIVED:
            key = (e.fields.get("peer"), e.role, e.fields.get("seq"), e.fields.get("message"))
            if sent.get(key):
                pairs.append((sent[key].popleft(), i))
    return pairs


def _offsets(
    entries: list[Entry], pairs: list[tuple[int, int]], nodes: dict[str, str]
) -> tuple[dict[str, float], list[str]]:
    offsets = {node: 0.0 for node in nodes.values()}
    early = [(s, r) for s, r in pairs if entries[r].t < entries[s].t]
    if not early:
        agree = "clocks agree: every message is received after it is sent, no correction"
        return offsets, [agree] if pairs else []
    # For nodes x, y: off[y] - off[x] must lie in [lo, hi], lo from x->y, hi from y->x.
    lo: dict[tuple[str, str], float] = {}
    for s, r in pairs:
        x, y = entries[s].node, entries[r].node
        if x != y:
            need = entries[s].t - entries[r].t
            lo[(x, y)] = max(lo.get((x, y), -float("inf")), need)
    reference = _reference(entries, nodes)
    known, queue = {reference}, deque([reference])
    while queue:
        x = queue.popleft()
        for y in sorted(offsets):
            if y in known or ((x, y) not in lo and (y, x) not in lo):
                continue
            low, high = lo.get((x, y), -float("inf")), -lo.get((y, x), -float("inf"))
            if low <= 0.0 <= high:
                delta = 0.0
            elif low != -float("inf") and high != float("inf"):
                delta = (low + high) / 2
            else:
                delta = low if low != -float("inf") else high
            offsets[y] = offsets[x] + delta
            known.add(y)
            queue.append(y)
    for _ in range(len(offsets) + 1):
        moved = False
        for s, r in pairs:
            gap = entries[s].t + offsets[entries[s].node] - entries[r].t - offsets[entries[r].node]
            if gap > -EPSILON_S and entries[s].node != entries[r].node:
                offsets[entries[r].node] += gap + EPSILON_S
                moved = True
        if not moved:
            break
    base = offsets[reference]
    offsets = {node: off - base for node, off in offsets.items()}
    notes = [
        f"{len(early)} message(s) were received before they were sent by the nodes' clocks: "
        f"clocks corrected relative to node {reference}"
    ]
    notes += [
        f"node {node}'s clock: {off * 1000:+.3f} ms" for node, off in sorted(offsets.items()) if off
    ]
    return offsets, notes


def _reference(entries: list[Entry], nodes: dict[str, str]) -> str:
    """The initiator's node (its part was started by a client), else the earliest one's."""
    for e in entries:
        if e.kind == "started" and e.fields.get("origin") == "client":
            return e.node
    return min(entries, key=lambda e: e.t).node if entries else next(iter(nodes.values()))


def _order(
    entries: list[Entry], pairs: list[tuple[int, int]], offsets: dict[str, float]
) -> list[Entry]:
    """A topological order (per-role order, sent before received) by corrected time."""
    waits_for: dict[int, list[int]] = defaultdict(list)
    blocking = [0] * len(entries)
    last: dict[str, int] = {}
    for i, e in enumerate(entries):  # each role's events are consecutive and in order of n
        if e.role in last:
            waits_for[last[e.role]].append(i)
            blocking[i] += 1
        last[e.role] = i
    for s, r in pairs:
        waits_for[s].append(r)
        blocking[r] += 1

    def key(i: int) -> tuple[float, str, int]:
        return (entries[i].t + offsets[entries[i].node], entries[i].role, entries[i].n)

    ready = [(key(i), i) for i in range(len(entries)) if blocking[i] == 0]
    heapq.heapify(ready)
    done: list[int] = []
    placed: set[int] = set()
    while len(done) < len(entries):
        if not ready:  # inconsistent answers (a cycle): take the earliest left, as is
            i = min((j for j in range(len(entries)) if j not in placed), key=key)
            blocking[i] = 0
        else:
            i = heapq.heappop(ready)[1]
            if i in placed:
                continue
        placed.add(i)
        done.append(i)
        for j in waits_for[i]:
            blocking[j] -= 1
            if blocking[j] == 0 and j not in placed:
                heapq.heappush(ready, (key(j), j))
    return [entries[i] for i in done]


def _unmatched(ordered: list[Entry], nodes: dict[str, str]) -> list[str]:
    notes = []
    for e in ordered:
        if e.kind not in (SENT, RECEIVED) or e.match is not None:
            continue
        peer = e.fields.get("peer")
        what = f"{e.fields.get('message')} seq {e.fields.get('seq')}"
        if e.kind == SENT:
            where = "not received" if peer in nodes else "its events were not fetched"
            notes.append(f"{e.role} -> {peer} {what}: {where}")
        else:
            where = "its send was not recorded" if peer in nodes else "its events were not fetched"
            notes.append(f"{peer} -> {e.role} {what}: {where}")
    return notes


__all__ = ["Entry", "NodeEvents", "Timeline", "merge"]
