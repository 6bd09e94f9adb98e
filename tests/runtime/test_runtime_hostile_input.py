"""Hostile input and the outcome protocol, in process: nodes driven through `node.deliver`.

Every field of every message is checked before anything of it is stored; a refused message
leaves no trace (no inbox row, no session record, in memory or in the SQLite file) and the
node goes on working; no row already in a store stops a node from starting (the session is
set aside as failed and reported). The outcome protocol's messages are accepted only in the
shape and direction the protocol gives them: DONE (-1), ABORT (-2) and QUERY (-4) from a
participant to the initiator, DECISION (-3) from the initiator to a participant. The initiator
alone decides, and every decision and vote is durable before anyone hears of it.

The peers of the node under test are played by the test: `Wire` acknowledges whatever the
node sends and keeps it, and the test forges what the peers would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer
from runtime_choreographies import double_charge

from accompanist_py.backoff import Backoff
from accompanist_py.choreography import Registry, choreography
from accompanist_py.errors import BusinessAbort, Overloaded
from accompanist_py.message import Kind, Message
from accompanist_py.node import Node, NodeConfig
from accompanist_py.saga import Transaction
from accompanist_py.service import LocalServiceClient
from accompanist_py.sidecar.app import make_app
from accompanist_py.store import MemoryStore, SQLiteStore
from accompanist_py.testing import LocalCluster

DONE, ABORT, DECISION, QUERY = -1, -2, -3, -4
TERMINAL = frozenset({"completed", "compensated", "failed"})
ABORTED = frozenset({"aborting", "compensated", "failed"})  # a decided (or vetoed) abort


@choreography(roles=["a", "b", "c"], initiator="a")
async def hostile_relay(op, n):
    """a holds and sends to b; b charges and sends to c; c sends back to a."""
    await op.transact("a", Transaction("hold", "hold", "undo_hold", {"n": 1}))
    at_b = await op.comm("a", "b", n)
    await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))
    at_c = await op.comm("b", "c", at_b)
    return await op.comm("c", "a", at_c)


@choreography(roles=["a", "b", "c"], initiator="a")
async def hostile_hand_off(op, n):
    """a holds and hands over to b, which charges; a's own part then returns at once."""
    await op.transact("a", Transaction("hold", "hold", "undo_hold", {"n": 1}))
    await op.comm("a", "b", n)
    return await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))


CHOR = hostile_relay.name
NOW = time.time()


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- messages, as the 8 fields of the wire format ----------------------------------------------


def row(
    *,
    chor: str | Any = CHOR,
    session: Any = "fresh",
    sender: Any = "a",
    receiver: Any = "b",
    seq: Any = 0,
    kind: Any = "data",
    payload: Any = None,
    headers: Any = None,
) -> list[Any]:
    """A message as the wire carries it; by default a well-formed data message a -> b."""
    return [
        chor,
        session,
        sender,
        receiver,
        seq,
        kind,
        pack(1) if payload is None else payload,
        {"t": NOW} if headers is None else headers,
    ]


def control(
    seq: int,
    body: Any,
    *,
    sender: str = "b",
    receiver: str = "a",
    session: str = "live",
    chor: str = CHOR,
    headers: Any = None,
) -> list[Any]:
    """A control message; by default from participant b to the initiator a, session "live"."""
    return row(
        chor=chor,
        session=session,
        sender=sender,
        receiver=receiver,
        seq=seq,
        kind="control",
        payload=pack(body),
        headers=headers,
    )


def as_message(fields: list[Any]) -> Message:
    """The message a transport would hand to `deliver`, without checking any field."""
    chor, session, sender, receiver, seq, kind, payload, headers = fields
    with contextlib.suppress(ValueError, TypeError):
        kind = Kind(kind)
    return Message(chor, session, sender, receiver, seq, kind, payload, headers)


VETO = {"reason": "declined", "failed": False, "involved": []}
ABORT_DECISION = {"outcome": "abort", "reason": "aborted by the test", "failed": False}
ROLE_PAIR = ("sender", "receiver", "initiator", "participant")


@dataclass(frozen=True)
class Case:
    """A malformed message, and the words of which its refusal must name at least one."""

    id: str
    row: list[Any]
    words: tuple[str, ...]


def malformed(chor: str) -> list[Case]:
    """Every malformed variant, for a choreography over roles a, b, c started at a.

    Messages to b are for session "fresh" (unknown there); messages to a are for session
    "live", which the test has running at a.
    """
    r = partial(row, chor=chor)
    c = partial(control, chor=chor)
    to_b = partial(control, chor=chor, sender="a", receiver="b", session="fresh")
    return [
        Case("choreography-empty", r(chor=""), ("choreography",)),
        Case("choreography-too-long", r(chor="x" * 129), ("choreography",)),
        Case("choreography-not-a-string", r(chor=7), ("choreography",)),
        Case("choreography-unknown", r(chor="no_such_choreography"), ("choreography",)),
        Case("session-empty", r(session=""), ("session",)),
        Case("session-too-long", r(session="s" * 129), ("session",)),
        Case("session-not-a-string", r(session=["s"]), ("session",)),
        Case("sender-empty", r(sender=""), ("sender",)),
        Case("sender-too-long", r(sender="a" * 129), ("sender",)),
        Case("sender-not-a-role", r(sender="zed"), ("sender", "role")),
        Case("receiver-empty", r(receiver=""), ("receiver",)),
        Case("receiver-too-long", r(receiver="b" * 129), ("receiver",)),
        Case("seq-2**63", r(seq=2**63), ("seq",)),
        Case("seq-below-the-control-seqs", r(seq=-5), ("seq",)),
        Case("seq-most-negative-int64", r(seq=-(2**63)), ("seq",)),
        Case("seq-a-string", r(seq="0"), ("seq",)),
        Case("seq-a-float", r(seq=0.0), ("seq",)),
        Case("control-seq-on-data", r(seq=DONE), ("seq", "kind")),
        Case("data-seq-on-control", r(kind="control", payload=pack({})), ("seq", "kind")),
        Case("kind-unknown", r(kind="bogus"), ("kind",)),
        Case("payload-not-bytes", r(payload="text"), ("payload",)),
        Case("payload-over-1-mib", r(payload=pack(b"x" * (1 << 20))), ("payload",)),
        Case("payload-not-msgpack", r(payload=b"\xc1"), ("payload",)),
        Case("payload-truncated", r(payload=b"\x92\x01"), ("payload",)),
        Case("payload-trailing-bytes", r(payload=b"\x01\x02"), ("payload",)),
        Case("headers-not-a-map", r(headers=[]), ("headers",)),
        Case("headers-c-none", r(headers={"c": None, "t": NOW}), ("headers",)),
        Case("headers-c-an-int", r(headers={"c": 1, "t": NOW}), ("headers",)),
        Case("headers-c-value-not-bytes", r(headers={"c": {"1": "yes"}, "t": NOW}), ("headers",)),
        Case("headers-c-id-not-a-string", r(headers={"c": {1: b"\xc3"}, "t": NOW}), ("headers",)),
        Case("headers-unknown-key", r(headers={"x": 1, "t": NOW}), ("headers",)),
        Case("headers-t-a-string", r(headers={"t": "yesterday"}), ("headers",)),
        Case("headers-t-nan", r(headers={"t": math.nan}), ("headers",)),
        Case("headers-t-infinite", r(headers={"t": math.inf}), ("headers",)),
        Case("done-body-an-int", c(DONE, 1), ("body",)),
        Case("done-body-a-list", c(DONE, []), ("body",)),
        Case("done-body-a-string", c(DONE, "done"), ("body",)),
        Case("done-body-empty", c(DONE, {}), ("body", "involved")),
        Case("done-body-extra-key", c(DONE, {"involved": [], "x": 1}), ("body",)),
        Case("done-involved-a-string", c(DONE, {"involved": "c"}), ("involved",)),
        Case("done-involved-not-strings", c(DONE, {"involved": [1]}), ("involved",)),
        Case("done-involves-an-unknown-role", c(DONE, {"involved": ["zed"]}), ("involved",)),
        Case("abort-body-an-int", c(ABORT, 1), ("body",)),
        Case("abort-reason-an-int", c(ABORT, {**VETO, "reason": 1}), ("reason",)),
        Case("abort-failed-a-string", c(ABORT, {**VETO, "failed": "yes"}), ("failed",)),
        Case("abort-involved-missing", c(ABORT, {"reason": "x", "failed": False}), ("involved",)),
        Case(
            "abort-involves-an-unknown-role", c(ABORT, {**VETO, "involved": ["zed"]}), ("involved",)
        ),
        Case("query-body-an-int", c(QUERY, 1), ("body",)),
        Case("query-body-a-list", c(QUERY, []), ("body",)),
        Case("query-body-not-empty", c(QUERY, {"x": 1}), ("body",)),
        Case("decision-body-an-int", to_b(DECISION, 1), ("body",)),
        Case("decision-body-a-string", to_b(DECISION, "abort"), ("body",)),
        Case(
            "decision-outcome-unknown",
            to_b(DECISION, {**ABORT_DECISION, "outcome": "maybe"}),
            ("outcome",),
        ),
        Case(
            "decision-reason-an-int", to_b(DECISION, {**ABORT_DECISION, "reason": 3}), ("reason",)
        ),
        Case(
            "decision-failed-none", to_b(DECISION, {**ABORT_DECISION, "failed": None}), ("failed",)
        ),
        Case(
            "decision-reason-missing",
            to_b(DECISION, {"outcome": "abort", "failed": False}),
            ("reason",),
        ),
        Case("decision-from-a-participant", c(DECISION, ABORT_DECISION), ROLE_PAIR),
        Case(
            "decision-between-participants", to_b(DECISION, ABORT_DECISION, sender="c"), ROLE_PAIR
        ),
        Case("done-from-the-initiator", to_b(DONE, {"involved": []}), ROLE_PAIR),
        Case("done-between-participants", to_b(DONE, {"involved": []}, sender="c"), ROLE_PAIR),
        Case("abort-from-the-initiator", to_b(ABORT, VETO), ROLE_PAIR),
        Case("abort-between-participants", to_b(ABORT, VETO, sender="c"), ROLE_PAIR),
        Case("query-from-the-initiator", to_b(QUERY, {}), ROLE_PAIR),
    ]


MALFORMED = malformed(CHOR)


# -- the node under test, and its peers played by the test -------------------------------------


class Wire:
    """A transport to peers that are never there: it acknowledges every batch and keeps it.

    `snoop`, if set, sees each message as it leaves, before the acknowledgement.
    """

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.snoop: Callable[[Message], None] | None = None

    async def start(self, roles: list[str], deliver: Any, on_ready: Any) -> None:
        pass

    async def send(self, receiver: str, batch: list[Message]) -> list[tuple[int, str]]:
        for msg in batch:
            if self.snoop is not None:
                self.snoop(msg)
            self.sent.append(msg)
        return []

    async def announce_ready(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def find(self, session: str, sender: str, receiver: str, seq: int) -> list[Message]:
        return [
            m
            for m in self.sent
            if (m.session, m.sender, m.receiver, m.seq) == (session, sender, receiver, seq)
        ]

    def bodies(self, session: str, sender: str, receiver: str, seq: int) -> list[Any]:
        return [unpack(m.payload) for m in self.find(session, sender, receiver, seq)]


@dataclass
class Service:
    """The service next to the node: records every call, refuses the operations in `refuse`."""

    refuse: frozenset[str] = frozenset()
    calls: list[tuple[str, str]] = field(default_factory=list)  # (operation, key)
    snoop: Callable[[str], None] | None = None

    def handle(self, operation: str, payload: Any, key: str) -> Any:
        if self.snoop is not None:
            self.snoop(operation)
        self.calls.append((operation, key))
        if operation in self.refuse:
            raise BusinessAbort(operation, f"{operation} declined")
        return {"operation": operation, "key": key}

    def ops(self) -> Counter[str]:
        return Counter(op for op, _ in self.calls)


@dataclass
class Rig:
    node: Node
    wire: Wire
    service: Service

    @property
    def store(self) -> Any:
        return self.node.store


def fast(**extra: Any) -> NodeConfig:
    return NodeConfig(receive_timeout_s=60.0, backoff=Backoff(initial_s=0.01, max_s=0.05), **extra)


@contextlib.asynccontextmanager
async def running(
    role: str,
    store: Any = None,
    *,
    config: NodeConfig | None = None,
    service: Service | None = None,
) -> AsyncIterator[Rig]:
    """A started node hosting `role`; closed on exit."""
    service = service or Service()
    wire = Wire()
    node = build_node(role, store, config, service, wire)
    await node.start()
    try:
        yield Rig(node, wire, service)
    finally:
        await node.close()


def build_node(
    role: str, store: Any, config: NodeConfig | None, service: Service, wire: Wire
) -> Node:
    return Node(
        role,
        [role],
        Registry([hostile_relay, hostile_hand_off]),
        wire,
        store=store if store is not None else MemoryStore(),
        service=LocalServiceClient(service.handle),
        config=config or fast(),
    )


async def until(predicate: Callable[[], Any], what: str, deadline_s: float = 5.0) -> Any:
    """Poll `predicate` until it is truthy (returned), failing after a generous deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"not within {deadline_s:g}s: {what}")
        await asyncio.sleep(0.01)


def inbox_rows(store: Any) -> int:
    return sum(len(box) for box in store._inbox.values())


def file_rows(path: Path, query: str, *params: Any) -> set[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return set(conn.execute(query, params))


def durable_state(path: Path, session: str, role: str) -> str | None:
    """The state of a session as the SQLite file holds it (what survives a kill -9 now)."""
    rows = file_rows(
        path, "SELECT state FROM sessions WHERE session_id = ? AND role = ?", session, role
    )
    return next(iter(rows))[0] if rows else None


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def new_store(kind: str, tmp_path: Path) -> Any:
    return MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "node.db")


@pytest.fixture
def process_exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of os._exit, which here are recorded instead of ending the test run."""
    calls: list[int] = []
    monkeypatch.setattr(os, "_exit", calls.append)
    return calls


def refusal(refused: list[tuple[int, str]], words: tuple[str, ...]) -> str:
    """The one refusal of a one-message batch, checked to be precise; returns its reason."""
    assert len(refused) == 1, refused
    index, reason = refused[0]
    assert index == 0, refused
    assert isinstance(reason, str) and reason.strip(), refused
    assert any(w in reason.lower() for w in words), f"{reason!r} names none of {words}"
    return reason


async def start_live(rig: Rig, session: str = "live", chor: str = CHOR) -> None:
    """Start `session` at the initiator; it then waits for its peers (played by the test)."""
    await rig.node.start_session(chor, [1], session_id=session, wait=False)
    await until(lambda: rig.wire.find(session, "a", "b", 0), "the initiator sent to b")


# -- validated before stored -------------------------------------------------------------------


@pytest.mark.parametrize("case", MALFORMED, ids=[c.id for c in MALFORMED])
async def test_a_malformed_message_is_refused_naming_its_field_and_leaves_no_trace(
    case, store_kind, tmp_path, process_exits
):
    at_initiator = case.row[3] == "a"
    role = "a" if at_initiator else "b"
    async with running(role, new_store(store_kind, tmp_path)) as rig:
        if at_initiator:
            await start_live(rig)
        refusal(await rig.node.deliver([as_message(case.row)]), case.words)
        if at_initiator:
            assert set(rig.store.sessions) == {("live", "a")}
            assert rig.node.status("live", "a").state == "running"
            assert rig.service.ops()["undo_hold"] == 0
        else:
            assert rig.store.sessions == {}
        assert inbox_rows(rig.store) == 0
        # The node goes on working: a well-formed message is taken as usual.
        if at_initiator:
            good = as_message(row(session="live", sender="c", receiver="a"))
            assert await rig.node.deliver([good]) == []
        else:
            assert await rig.node.deliver([as_message(row(session="after"))]) == []
            assert rig.store.session("after", "b") is not None
    assert process_exits == [], "the store gave up the process"
    if store_kind == "sqlite":
        db = tmp_path / "node.db"
        inbox = file_rows(db, "SELECT session_id, receiver, sender, seq FROM inbox")
        sessions = file_rows(db, "SELECT session_id, role FROM sessions")
        if at_initiator:
            assert inbox == {("live", "a", "c", 0)}
            assert sessions == {("live", "a")}
        else:
            assert {s for s, *_ in inbox} == {"after"}
            assert sessions == {("after", "b")}


async def test_the_node_stops_when_a_message_arrives_in_the_same_instant(store_kind, tmp_path):
    # The message a waiting receive takes and the node's stop land in one loop iteration:
    # with asyncio.wait_for (3.11) the receive returned the message and swallowed the
    # cancellation, and close() waited for ever on a session that went on waiting.
    node = build_node("a", new_store(store_kind, tmp_path), None, Service(), Wire())
    await node.start()
    await start_live(Rig(node, node.transport, Service()))
    task = node.sessions[("live", "a")].task
    assert await node.deliver([as_message(row(session="live", sender="c", receiver="a"))]) == []
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        await node.close()
    assert task.done()


async def test_one_refused_message_does_not_hold_up_the_rest_of_its_batch(store_kind, tmp_path):
    batch = [
        as_message(row(session="first")),
        as_message(row(session="poison", headers={"c": 1, "t": NOW})),
        as_message(row(session="second")),
    ]
    async with running("b", new_store(store_kind, tmp_path)) as rig:
        refused = await rig.node.deliver(batch)
        assert [index for index, _ in refused] == [1], refused
        assert "headers" in refused[0][1]
        assert {s for s, _ in rig.store.sessions} == {"first", "second"}


async def test_a_full_store_queue_defers_every_peer_batch_storing_nothing(monkeypatch):
    """Backpressure: over max_store_backlog even a running session's message is told to come
    back later (the sender keeps it), and taken once the queue has drained."""
    async with running("a", config=fast(max_store_backlog=10)) as rig:
        await start_live(rig)
        reply = [as_message(row(session="live", sender="c", receiver="a"))]
        monkeypatch.setattr(rig.store, "backlog", lambda: 10)
        with pytest.raises(Overloaded, match="store writes queued"):
            await rig.node.deliver(reply)
        assert inbox_rows(rig.store) == 0
        assert rig.node.metrics.total("accompanist_batches_deferred_total") == 1
        monkeypatch.setattr(rig.store, "backlog", lambda: 0)
        assert await rig.node.deliver(reply) == []
        assert rig.node.metrics.total("accompanist_batches_deferred_total") == 1


async def test_a_seq_of_2_63_is_refused_and_the_store_keeps_writing(tmp_path, process_exits):
    db = tmp_path / "node.db"
    async with running("b", SQLiteStore(db)) as rig:
        refusal(await rig.node.deliver([as_message(row(session="huge", seq=2**63))]), ("seq",))
        assert await rig.node.deliver([as_message(row(session="after"))]) == []
    assert process_exits == [], "one message made the store writer end the process"
    assert file_rows(db, "SELECT session_id, role FROM sessions") == {("after", "b")}
    assert {s for (s,) in file_rows(db, "SELECT session_id FROM inbox")} == {"after"}


async def test_a_participant_refuses_to_start_a_session_whose_start_time_is_too_old(
    store_kind, tmp_path
):
    # Half the record retention: older than that, its tombstone may already be gone.
    config = fast(retention_s=500.0, record_retention_s=1000.0)
    stale = as_message(row(session="stale", headers={"t": time.time() - 600}))
    recent = as_message(row(session="recent", headers={"t": time.time() - 100}))
    async with running("b", new_store(store_kind, tmp_path), config=config) as rig:
        reason = refusal(await rig.node.deliver([stale]), ("too old",))
        assert "too old" in reason
        assert rig.store.session("stale", "b") is None
        assert rig.store.inbox("stale", "b") == []
        assert await rig.node.deliver([recent]) == []
        assert rig.store.session("recent", "b") is not None


async def test_a_payload_over_the_configured_limit_is_refused():
    async with running("b", config=fast(max_payload_bytes=1024)) as rig:
        big = as_message(row(session="big", payload=pack(b"x" * 2000)))
        refusal(await rig.node.deliver([big]), ("payload",))
        assert rig.store.session("big", "b") is None
        small = as_message(row(session="small", payload=pack(b"x" * 500)))
        assert await rig.node.deliver([small]) == []


async def test_messages_for_sessions_unknown_at_the_initiator_are_never_stored(
    store_kind, tmp_path
):
    ghosts = [
        as_message(
            row(
                session=f"ghost-{i}",
                sender="bc"[i % 2],
                receiver="a",
                seq=i % 5,
                kind=("data", "choice")[i % 3 == 0],
            )
        )
        for i in range(1000)
    ]
    async with running("a", new_store(store_kind, tmp_path)) as rig:
        for start in range(0, len(ghosts), 100):
            await rig.node.deliver(ghosts[start : start + 100])
        await rig.store.flush()
        assert rig.store.sessions == {}
        assert inbox_rows(rig.store) == 0
        assert rig.store.outbox_size() == 0
        assert not rig.node.sessions
    if store_kind == "sqlite":
        db = tmp_path / "node.db"
        for table in ("sessions", "inbox", "outbox", "journal", "txns"):
            assert file_rows(db, f"SELECT count(*) FROM {table}") == {(0,)}, table


@pytest.mark.parametrize(
    ("seq", "body"),
    [(DONE, {"involved": ["c"]}), (ABORT, VETO), (QUERY, {})],
    ids=["done", "abort", "query"],
)
async def test_a_participant_asking_about_a_session_unknown_at_the_initiator_hears_presumed_abort(
    seq, body
):
    async with running("a") as rig:
        await rig.node.deliver([as_message(control(seq, body, session="forgotten"))])
        await until(
            lambda: rig.wire.find("forgotten", "a", "b", DECISION), "a DECISION to b (abort)"
        )
        (decision,) = rig.wire.bodies("forgotten", "a", "b", DECISION)
        assert set(decision) == {"outcome", "reason", "failed"}, decision
        assert decision["outcome"] == "abort"
        assert isinstance(decision["failed"], bool)
        assert rig.store.session("forgotten", "a") is None
        assert inbox_rows(rig.store) == 0


async def test_a_decision_abort_for_a_session_never_heard_of_leaves_only_a_terminal_tombstone():
    async with running("b") as rig:
        abort = as_message(
            control(DECISION, ABORT_DECISION, sender="a", receiver="b", session="gone")
        )
        assert await rig.node.deliver([abort]) == []

        def tombstone() -> Any:
            rec = rig.store.session("gone", "b")
            return rec if rec is not None and rec.state in TERMINAL else None

        rec = await until(tombstone, "a terminal tombstone for 'gone' at b")
        assert rec.state in ("compensated", "failed")
        assert rig.store.inbox("gone", "b") == []
        # A late copy of the session's first message does not bring it back to life.
        await rig.node.deliver([as_message(row(session="gone"))])
        await asyncio.sleep(0.2)
        assert rig.store.session("gone", "b").state == rec.state
        assert rig.service.calls == []
        assert ("gone", "b") not in rig.node.sessions


async def test_a_query_is_never_stored(store_kind, tmp_path):
    async with running("a", new_store(store_kind, tmp_path)) as rig:
        await start_live(rig)
        assert await rig.node.deliver([as_message(control(QUERY, {}))]) == []
        assert rig.store.inbox_message("live", "a", "b", QUERY) is None
        assert rig.store.inbox("live", "a") == []
    if store_kind == "sqlite":
        rows = file_rows(tmp_path / "node.db", "SELECT seq FROM inbox WHERE seq = ?", QUERY)
        assert rows == set()


# -- one decider, durable before visible -------------------------------------------------------


async def test_a_participant_votes_only_once_what_its_part_did_is_durable(tmp_path):
    db = tmp_path / "node.db"
    seen: dict[str, Any] = {}

    def snoop(msg: Message) -> None:
        if msg.seq == DONE:
            seen["state"] = durable_state(db, msg.session, "b")
            seen["txns"] = file_rows(
                db, "SELECT name, state FROM txns WHERE session_id = ?", msg.session
            )
            seen["to_c"] = file_rows(
                db, "SELECT seq FROM outbox WHERE session_id = ? AND receiver = 'c'", msg.session
            )

    async with running("b", SQLiteStore(db)) as rig:
        rig.wire.snoop = snoop
        assert await rig.node.deliver([as_message(row(session="vote"))]) == []
        await until(lambda: rig.wire.find("vote", "b", "a", DONE), "b's DONE")
        assert rig.wire.bodies("vote", "b", "a", DONE) == [{"involved": ["c"]}]
    assert seen["state"] not in (None, "running"), seen
    assert seen["txns"] == {("charge", "committed")}, seen
    assert seen["to_c"] == {(0,)}, seen


async def test_a_participant_waiting_for_the_decision_asks_again_and_obeys_the_abort():
    async with running("b", config=fast(query_interval_s=0.2)) as rig:
        assert await rig.node.deliver([as_message(row(session="ask"))]) == []
        await until(lambda: rig.wire.find("ask", "b", "a", QUERY), "a QUERY from b to a")
        assert rig.wire.bodies("ask", "b", "a", QUERY)[0] == {}
        assert rig.node.status("ask", "b").state not in ABORTED  # it never aborts by itself
        abort = as_message(
            control(DECISION, ABORT_DECISION, sender="a", receiver="b", session="ask")
        )
        assert await rig.node.deliver([abort]) == []
        await until(lambda: rig.node.status("ask", "b").state in TERMINAL, "b terminal")
        assert rig.node.status("ask", "b").state == "compensated"
        assert rig.service.ops() == {"charge": 1, "undo_charge": 1}


async def test_a_participant_that_fails_before_voting_vetoes_to_the_initiator_only_once_durable(
    tmp_path,
):
    db = tmp_path / "node.db"
    seen: list[str | None] = []

    def snoop(msg: Message) -> None:
        if msg.seq == ABORT:
            seen.append(durable_state(db, msg.session, "b"))

    service = Service(refuse=frozenset({"charge"}))
    async with running("b", SQLiteStore(db), service=service) as rig:
        rig.wire.snoop = snoop
        assert await rig.node.deliver([as_message(row(session="veto"))]) == []
        await until(lambda: rig.wire.find("veto", "b", "a", ABORT), "b's ABORT to a")
        (body,) = rig.wire.bodies("veto", "b", "a", ABORT)
        assert set(body) == {"reason", "failed", "involved"}, body
        assert isinstance(body["reason"], str) and body["reason"]
        assert body["failed"] is False
        assert body["involved"] == []
        assert [m for m in rig.wire.sent if m.receiver != "a"] == []
        assert not rig.wire.find("veto", "b", "a", DONE)
        abort = as_message(
            control(DECISION, ABORT_DECISION, sender="a", receiver="b", session="veto")
        )
        assert await rig.node.deliver([abort]) == []
        await until(lambda: rig.node.status("veto", "b").state in TERMINAL, "b terminal")
        assert rig.node.status("veto", "b").state == "compensated"
    assert seen and all(s in ABORTED for s in seen), f"ABORT left while the file said {seen}"


async def test_a_veto_makes_the_initiator_decide_abort_durably_before_anyone_hears_of_it(
    tmp_path,
):
    db = tmp_path / "node.db"
    at_decision: list[str | None] = []
    at_compensation: list[str | None] = []

    def snoop_wire(msg: Message) -> None:
        if msg.seq == DECISION:
            at_decision.append(durable_state(db, msg.session, "a"))

    def snoop_service(operation: str) -> None:
        if operation.startswith("undo_"):
            at_compensation.append(durable_state(db, "live", "a"))

    async with running("a", SQLiteStore(db), service=Service(snoop=snoop_service)) as rig:
        rig.wire.snoop = snoop_wire
        await start_live(rig)
        assert await rig.node.deliver([as_message(control(ABORT, VETO))]) == []
        await until(lambda: rig.node.status("live", "a").state in TERMINAL, "a terminal")
        assert rig.node.status("live", "a").state == "compensated"
        assert rig.service.ops() == {"hold": 1, "undo_hold": 1}
        decisions = rig.wire.bodies("live", "a", "b", DECISION)
        assert decisions and all(d["outcome"] == "abort" for d in decisions), decisions
        assert [m for m in rig.wire.sent if m.seq == ABORT] == [], "the initiator sent ABORT"
    assert at_decision and all(s in ABORTED for s in at_decision), at_decision
    assert at_compensation and all(s in ABORTED for s in at_compensation), at_compensation


async def test_a_client_hears_of_a_state_only_once_it_is_durable(tmp_path):
    store = SQLiteStore(tmp_path / "node.db")
    held, gate = threading.Event(), threading.Event()
    commit = store._commit

    def commit_held_at_the_abort(conn: sqlite3.Connection, batch: list) -> dict:
        if any(params and "aborting" in params for _, params, _ in batch):
            held.set()
            gate.wait(60)
        return commit(conn, batch)

    store._commit = commit_held_at_the_abort
    try:
        async with running("a", store) as rig:
            await start_live(rig)
            veto = asyncio.create_task(rig.node.deliver([as_message(control(ABORT, VETO))]))
            await until(held.is_set, "the abort decision on its way to disk")
            assert rig.store.session("live", "a").state == "aborting"  # decided, not durable
            assert rig.node.status("live", "a").state == "running"
            assert rig.service.ops()["undo_hold"] == 0
            gate.set()
            assert await veto == []
            await until(lambda: rig.node.status("live", "a").state in TERMINAL, "a terminal")
            assert rig.node.status("live", "a").state == "compensated"
    finally:
        gate.set()


async def _commit_live(rig: Rig) -> None:
    """Play b and c through session "live" of hostile_relay: c's message, then both votes."""
    await start_live(rig)
    for msg in (
        row(session="live", sender="c", receiver="a"),
        control(DONE, {"involved": ["c"]}),
        control(DONE, {"involved": ["a"]}, sender="c"),
    ):
        assert await rig.node.deliver([as_message(msg)]) == []
    await until(lambda: rig.node.status("live", "a").state in TERMINAL, "a terminal")


async def test_the_commit_decision_is_durable_before_any_decision_leaves(tmp_path):
    db = tmp_path / "node.db"
    at_decision: list[str | None] = []

    def snoop(msg: Message) -> None:
        if msg.seq == DECISION:
            at_decision.append(durable_state(db, msg.session, "a"))

    async with running("a", SQLiteStore(db)) as rig:
        rig.wire.snoop = snoop
        await _commit_live(rig)
        assert rig.node.status("live", "a").state == "completed"
        await until(lambda: len(at_decision) >= 2, "DECISIONs to b and c")
        for r in "bc":
            assert [d["outcome"] for d in rig.wire.bodies("live", "a", r, DECISION)] == ["commit"]
    assert at_decision == ["completed", "completed"], at_decision


async def test_an_abort_arriving_after_the_commit_decision_changes_nothing():
    async with running("a") as rig:
        await _commit_live(rig)
        assert rig.node.status("live", "a").state == "completed"
        await rig.node.deliver([as_message(control(ABORT, {**VETO, "involved": ["c"]}))])
        await asyncio.sleep(0.3)
        assert rig.node.status("live", "a").state == "completed"
        assert rig.service.ops() == {"hold": 1}
        outcomes = [unpack(m.payload)["outcome"] for m in rig.wire.sent if m.seq == DECISION]
        assert outcomes and set(outcomes) == {"commit"}, outcomes


# -- no wait without an end --------------------------------------------------------------------


async def test_a_vote_naming_a_role_that_never_runs_aborts_at_the_decision_deadline():
    config = fast(decision_timeout_s=1.0)
    async with running("a", config=config) as rig:
        await start_live(rig, "stuck", hostile_hand_off.name)
        done = control(DONE, {"involved": ["c"]}, session="stuck", chor=hostile_hand_off.name)
        assert await rig.node.deliver([as_message(done)]) == []
        await until(
            lambda: rig.node.status("stuck", "a").state in TERMINAL,
            "the session ends although c never votes",
            deadline_s=15.0,
        )
        assert rig.node.status("stuck", "a").state in ("compensated", "failed")
        assert rig.service.ops() == {"hold": 1, "undo_hold": 1}
        # The decision left before the compensation; the outbox may still be sending it.
        decisions = await until(
            lambda: rig.wire.bodies("stuck", "a", "b", DECISION), "the decision sent to b"
        )
        assert decisions and all(d["outcome"] == "abort" for d in decisions), decisions


# -- no row in a store stops a node from starting ----------------------------------------------

POISON = {
    # id: (role whose inbox row is spoiled, its sender, the spoiling SQL assignments)
    "headers-not-a-map": ("b", "a", "headers = x'01'"),
    "headers-not-msgpack": ("b", "a", "headers = x'c1'"),
    "kind-unknown": ("b", "a", "kind = 'bogus'"),
    "decision-body-an-int": ("b", "a", "seq = -3, kind = 'control', payload = x'01'"),
    "done-body-an-int": ("a", "c", "seq = -1, kind = 'control', payload = x'01'"),
}


async def _leave_unfinished(db: Path, role: str) -> None:
    """Run session "poisoned" at `role` until it waits for its peers, then stop the node."""
    async with running(role, SQLiteStore(db)) as rig:
        if role == "b":
            assert await rig.node.deliver([as_message(row(session="poisoned"))]) == []
            await until(lambda: rig.wire.find("poisoned", "b", "a", DONE), "b voted")
        else:
            await start_live(rig, "poisoned")
            from_c = row(session="poisoned", sender="c", receiver="a")
            assert await rig.node.deliver([as_message(from_c)]) == []


@pytest.mark.parametrize("poison", sorted(POISON))
async def test_no_row_in_the_store_stops_a_node_from_starting(tmp_path, poison):
    role, sender, spoil = POISON[poison]
    db = tmp_path / "node.db"
    await _leave_unfinished(db, role)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        spoiled = conn.execute(
            f"UPDATE inbox SET {spoil} WHERE session_id = 'poisoned' AND receiver = ? "
            "AND sender = ?",
            (role, sender),
        ).rowcount
    assert spoiled == 1

    node = build_node(role, SQLiteStore(db), None, Service(), Wire())
    async with TestClient(TestServer(make_app(node))) as client:  # starts the node
        health = await (await client.get("/health")).json()
        quarantined = [q for q in health["quarantined"] if q["session_id"] == "poisoned"]
        assert len(quarantined) == 1, health
        assert quarantined[0]["role"] == role
        assert isinstance(quarantined[0]["reason"], str) and quarantined[0]["reason"]
        metrics = await (await client.get("/metrics")).text()
        samples = dict(
            line.rsplit(" ", 1) for line in metrics.splitlines() if line and line[0] != "#"
        )
        assert float(samples.get("accompanist_sessions_quarantined", "nan")) == 1, metrics
        assert node.status("poisoned", role).state == "failed"
        # The node goes on working.
        if role == "b":
            assert await node.deliver([as_message(row(session="healthy"))]) == []
        else:
            await node.start_session(CHOR, [2], session_id="healthy", wait=False)
        assert node.status("healthy", role).state not in TERMINAL

    # And it starts again.
    node = build_node(role, SQLiteStore(db), None, Service(), Wire())
    await node.start()
    try:
        assert node.status("poisoned", role).state == "failed"
    finally:
        await node.close()


# -- transactions are keyed apart --------------------------------------------------------------


class CountingServices:
    """Services of every role that count each call and never dedup (so repeats show)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (role, operation, key)

    def at(self, role: str) -> Callable[[str, Any, str], Any]:
        def handle(operation: str, payload: Any, key: str) -> Any:
            self.calls.append((role, operation, key))
            return {"key": key}

        return handle

    def ops(self, role: str) -> Counter[str]:
        return Counter(op for r, op, _ in self.calls if r == role)


async def test_two_transactions_named_alike_at_one_role_fail_the_session_without_a_second_commit():
    services = CountingServices()
    handlers = {r: services.at(r) for r in "abc"}
    async with LocalCluster([double_charge], services=handlers) as cluster:
        results = await cluster.run(double_charge, {}, session_id="dup")
        assert cluster.states("dup") == dict.fromkeys("abc", "failed")
    reason = str(results["a"])
    assert "charge" in reason and "twice" in reason.lower(), results["a"]
    assert services.ops("b")["charge"] == 1, services.calls
    for role in "abc":
        ops = services.ops(role)
        for op in [o for o in ops if not o.startswith("undo_")]:
            assert ops[f"undo_{op}"] == ops[op] == 1, (role, ops)
