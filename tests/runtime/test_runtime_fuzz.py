"""Fuzzing the peer routes in process: whatever bytes a peer sends, the node stays whole.

A node (hosting the initiator a, or the participant b, over a MemoryStore or a SQLiteStore)
is served by the sidecar's app (`make_app`, peers not certified: every sender is believed, so
the fuzz reaches the deepest checks) through aiohttp's test server. Before fuzzing, a
well-formed session "live" runs there and waits: at a for c's message, at b for the decision.
Then each example posts one body to `POST /messages` or one frame to the `/stream` WebSocket:
raw bytes, or msgpack batches of rows that are mostly well formed with a field or two made
hostile (ints near 2**63, huge strings, deep nesting, wrong kinds, control seqs with random
bodies). After each example:

- the answer is 200 with refusals, or a 4xx (`/messages`); an answer frame, or a clean close
  (`/stream`): never a 5xx, an internal error in the log, or a hang;
- `GET /health` is 200;
- "live" is unharmed: its status is unchanged and its inbox rows are all there (unless the
  example itself sent it a message the node took);
- a refused message left nothing behind: every session record and inbox row that appeared,
  in memory or in the SQLite file, belongs to a message the node took.

Examples are derandomized, so a failure replays exactly; `@example` pins the hostile values
that found bugs, so they are tried on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from accompanist_py.backoff import Backoff
from accompanist_py.choreography import Registry, choreography
from accompanist_py.message import Message
from accompanist_py.node import Node, NodeConfig
from accompanist_py.saga import Transaction
from accompanist_py.service import LocalServiceClient
from accompanist_py.sidecar.app import Access, make_app
from accompanist_py.sidecar.config import Limits
from accompanist_py.store import MemoryStore, SQLiteStore


@choreography(roles=["a", "b", "c"], initiator="a")
async def fuzzed_relay(op, n):
    """a holds and sends to b; b charges and sends to c; c sends back to a."""
    await op.transact("a", Transaction("hold", "hold", "undo_hold", {"n": 1}))
    at_b = await op.comm("a", "b", n)
    await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))
    at_c = await op.comm("b", "c", at_b)
    return await op.comm("c", "a", at_c)


CHOR = fuzzed_relay.name
NOW = time.time()
FIELDS = ("chor", "session", "sender", "receiver", "seq", "kind", "payload", "headers")
DONE, ABORT, DECISION, QUERY = -1, -2, -3, -4
MAX_PAYLOAD = 4096
LIMITS = Limits(max_body_bytes=64 * 1024, max_frame_bytes=64 * 1024)
ANSWER_S = 30.0  # a hang guard, not a timing assertion
EXAMPLES = 250


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- the node under fuzz, and its peers that are never there -----------------------------------


class Sink:
    """A transport that acknowledges whatever the node sends and keeps it."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def start(self, roles: list[str], deliver: Any, on_ready: Any) -> None:
        pass

    async def send(self, receiver: str, batch: list[Message]) -> list[tuple[int, str]]:
        self.sent.extend(batch)
        return []

    async def announce_ready(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def has(self, session: str, sender: str, receiver: str, seq: int) -> bool:
        return any(m.key == (session, sender, receiver, seq) for m in self.sent)


class InternalErrors(logging.Handler):
    """Collects log records that carry an exception: an internal error, whoever logs it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # asyncio's "exception never retrieved" is reported when the garbage collector gets
        # to it, often in a later test: only what the app and the runtime log is attributed.
        if record.exc_info and record.name.startswith(("aiohttp", "accompanist_py")):
            self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{r.name}: {r.getMessage()}" for r in self.records]
        self.records.clear()
        return found


@dataclass
class Rig:
    role: str
    node: Node
    client: TestClient
    sink: Sink
    db: Path | None
    errors: InternalErrors
    live_touched: bool = False  # an example delivered a message to "live" that was taken
    examples: int = field(default=0)


async def until(predicate: Callable[[], Any], what: str, deadline_s: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + deadline_s
    while not predicate():
        assert asyncio.get_running_loop().time() < end, f"not within {deadline_s:g}s: {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(role: str, store_kind: str, tmp_path: Path) -> AsyncIterator[Rig]:
    """The node hosting `role`, served by the sidecar app, with "live" running and waiting."""
    db = tmp_path / "fuzzed.db" if store_kind == "sqlite" else None
    store = SQLiteStore(db) if db is not None else MemoryStore()
    sink = Sink()
    node = Node(
        role,
        [role],
        Registry([fuzzed_relay]),
        sink,
        store=store,
        service=LocalServiceClient(lambda op, payload, key: {"op": op, "key": key}),
        config=NodeConfig(
            receive_timeout_s=300.0,
            max_payload_bytes=MAX_PAYLOAD,
            backoff=Backoff(initial_s=0.01, max_s=0.05),
        ),
    )
    errors = InternalErrors()
    logging.getLogger().addHandler(errors)
    try:
        app = make_app(node, Access(peers_certified=False), LIMITS)
        async with TestClient(TestServer(app)) as client:  # starts the node
            if role == "a":
                await node.start_session(CHOR, [1], session_id="live", wait=False)
                await until(lambda: sink.has("live", "a", "b", 0), "a sent to b")
            else:
                first = [CHOR, "live", "a", "b", 0, "data", pack(1), {"t": NOW}]
                async with client.post("/messages", data=pack([first])) as resp:
                    assert resp.status == 200 and unpack(await resp.read()) == []
                await until(lambda: sink.has("live", "b", "a", DONE), "b voted")
            yield Rig(role, node, client, sink, db, errors)
    finally:
        gc.collect()  # what this node leaked is reported now, not in the next test
        logging.getLogger().removeHandler(errors)


# -- what a hostile peer sends -----------------------------------------------------------------

EDGE_INTS = st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**63) + 1, -5, -4, -3, -2, -1, 0, 1, 2**32]
)
INTS = EDGE_INTS | st.integers(-(2**63), 2**64 - 1)
TIMES = (
    st.sampled_from([NOW, 0, 1e308, -1e308, math.nan, math.inf, -math.inf, 2**63, 2**64 - 1])
    | INTS
    | st.floats()
)
HUGE = st.sampled_from([MAX_PAYLOAD + 1, 20_000, 70_000]).map(lambda n: "x" * n)
SCALARS = (
    st.none()
    | st.booleans()
    | INTS
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | HUGE
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=10,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


JUNK = VALUES | st.integers(1, 400).map(nested)
NAMES = st.sampled_from(["a", "b", "c", "zed", "", "x" * 129, "A", "a "]) | JUNK
SESSIONS = st.sampled_from(["live", "fresh-1", "fresh-2", "s" * 128]) | st.text(min_size=1)
ROLE_LISTS = st.lists(st.sampled_from(["a", "b", "c", "zed", ""]) | JUNK, max_size=3)
BODIES = st.one_of(
    st.fixed_dictionaries({"involved": ROLE_LISTS}),
    st.fixed_dictionaries(
        {
            "reason": st.text(max_size=10) | JUNK,
            "failed": st.booleans() | JUNK,
            "involved": ROLE_LISTS,
        }
    ),
    st.fixed_dictionaries(
        {
            "outcome": st.sampled_from(["commit", "abort", "maybe"]) | JUNK,
            "reason": st.none() | st.text(max_size=10) | JUNK,
            "failed": st.booleans() | JUNK,
        }
    ),
    st.just({}),
    JUNK,
)
KEYS = (
    st.text(min_size=1, max_size=6)
    | st.sampled_from(["", "x" * 129])
    | INTS
    | st.binary(max_size=4)
)
CHOICES = st.dictionaries(KEYS, st.binary(max_size=8) | JUNK, max_size=4)


def mostly(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values of the field's own type two times in three, anything else the third: a wrong
    type refuses the whole batch, so the deeper checks are reached with the right one."""
    return st.one_of(typed, typed, JUNK)


HOSTILE = {
    "chor": mostly(st.sampled_from(["no_such_choreography", "", "x" * 129]) | st.text()),
    "session": mostly(st.sampled_from(["", "s" * 129, "live"]) | st.text(max_size=6)),
    "sender": mostly(st.sampled_from(["a", "b", "c", "zed", "", "x" * 129, "A"]) | st.text()),
    "receiver": mostly(st.sampled_from(["a", "b", "c", "zed", "", "x" * 129]) | st.text()),
    "seq": mostly(INTS),
    "kind": mostly(st.sampled_from(["bogus", "DATA", "control", "data", "choice"])),
    "payload": mostly(
        st.one_of(BODIES.map(pack), VALUES.map(pack), st.binary(max_size=16), HUGE.map(pack))
    ),
    "headers": mostly(
        st.one_of(
            st.fixed_dictionaries({"t": TIMES}),
            st.fixed_dictionaries({"t": TIMES, "c": CHOICES | JUNK}),
            st.dictionaries(st.text(max_size=3), VALUES, max_size=3),
        )
    ),
}


@st.composite
def plausible_row(draw: st.DrawFn, role: str) -> list[Any]:
    """A well-formed message to `role`, with up to two of its fields made hostile."""
    others = [r for r in "abc" if r != role]
    is_control = draw(st.booleans())
    fields: dict[str, Any] = {
        "chor": CHOR,
        "session": draw(SESSIONS),
        "sender": draw(st.sampled_from(others)),
        "receiver": role,
        "seq": draw(
            st.sampled_from([DONE, ABORT, DECISION, QUERY]) if is_control else st.integers(0, 3)
        ),
        "kind": "control" if is_control else draw(st.sampled_from(["data", "choice"])),
        "payload": pack(draw(BODIES if is_control else VALUES)),
        "headers": draw(
            st.fixed_dictionaries({"t": st.just(NOW)}, optional={"c": CHOICES})
            if draw(st.booleans())
            else st.just({"t": NOW})
        ),
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)):
        fields[name] = draw(HOSTILE[name])
    return [fields[f] for f in FIELDS]


def batches(role: str) -> st.SearchStrategy[Any]:
    plausible = st.lists(plausible_row(role), min_size=1, max_size=4)
    rows = plausible_row(role) | st.lists(JUNK, min_size=7, max_size=9) | JUNK
    return st.one_of(plausible, plausible, plausible, st.lists(rows, max_size=4), JUNK)


def raw_bodies(role: str) -> st.SearchStrategy[bytes]:
    """Bytes: random ones, and valid encodings cut short or with one byte flipped."""

    def spoil(data: bytes, cut: int, flip: int) -> bytes:
        if not data:
            return data
        cut, flip = cut % (len(data) + 1), flip % len(data)
        flipped = data[:flip] + bytes([data[flip] ^ 0xFF]) + data[flip + 1 :]
        return flipped[:cut] if cut else flipped

    valid = st.lists(plausible_row(role), min_size=1, max_size=3).map(pack)
    return st.one_of(
        st.binary(max_size=512),
        st.builds(spoil, valid, st.integers(0, 4096), st.integers(0, 4096)),
        valid.map(lambda data: data[: len(data) // 2]),
        st.sampled_from([b"", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"]),
    )


def row_with(**fields: Any) -> list[Any]:
    """A well-formed DATA from a to b for session "fresh-1", with `fields` replaced."""
    base = dict(
        zip(FIELDS, [CHOR, "fresh-1", "a", "b", 0, "data", pack(1), {"t": NOW}], strict=True)
    )
    base.update(fields)
    return [base[f] for f in FIELDS]


# Found by this fuzz (see the report in the module's history): a start time that fits
# msgpack's uint64 but not SQLite's INTEGER passes validation and fails only at the store.
START_TIME_2_63 = [row_with(headers={"t": 2**63})]
START_TIME_2_64 = [row_with(headers={"t": 2**64 - 1})]


# -- the invariants ----------------------------------------------------------------------------


@dataclass
class Snapshot:
    records: set[tuple[str, str]]
    inbox: set[tuple[str, str, str, int]]
    file_records: set[tuple[str, str]]
    file_inbox: set[tuple[str, str, str, int]]
    live: dict[str, Any]


def _file(db: Path | None, sql: str) -> set[tuple[Any, ...]]:
    if db is None:
        return set()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return set(conn.execute(sql))


async def snapshot(rig: Rig) -> Snapshot:
    store = rig.node.store
    await store.flush()
    inbox = {
        (session, receiver, sender, seq)
        for (session, receiver), box in store._inbox.items()
        for (sender, seq) in box
    }
    return Snapshot(
        records=set(store.sessions),
        inbox=inbox,
        file_records=_file(rig.db, "SELECT session_id, role FROM sessions"),
        file_inbox=_file(rig.db, "SELECT session_id, receiver, sender, seq FROM inbox"),
        live=rig.node.status("live", rig.role).to_json(),
    )


def taken_rows(rows: Any, refused: Any) -> list[list[Any]]:
    """The rows of a batch the node took: all but the refused ones (by index)."""
    assert isinstance(refused, list), refused
    indexes = []
    for entry in refused:
        assert isinstance(entry, list) and len(entry) == 2, refused
        index, reason = entry
        assert isinstance(index, int) and 0 <= index < len(rows), refused
        assert isinstance(reason, str) and reason.strip(), refused
        indexes.append(index)
    assert len(set(indexes)) == len(indexes), f"a message refused twice: {refused}"
    return [r for i, r in enumerate(rows) if i not in set(indexes)]


async def check_after(rig: Rig, before: Snapshot, taken: list[list[Any]]) -> None:
    """Every invariant of the module docstring, after one example that took `taken`."""
    assert rig.errors.take() == [], "an internal error was logged"
    async with asyncio.timeout(ANSWER_S):
        health = await rig.client.get("/health")
        assert health.status == 200, await health.text()
    after = await snapshot(rig)
    records = {(r[1], r[3]) for r in taken}
    keys = {(r[1], r[3], r[2], r[4]) for r in taken}
    assert after.records - before.records <= records, "a refused message left a session record"
    assert after.inbox - before.inbox <= keys, "a refused message left an inbox row"
    assert after.file_records - before.file_records <= records, "a session record on disk"
    assert after.file_inbox - before.file_inbox <= keys, "an inbox row on disk"
    live_rows = {k for k in before.file_inbox if k[0] == "live"}
    assert live_rows <= after.file_inbox, "an inbox row of the live session went missing"
    if any(r[1] == "live" for r in taken):
        rig.live_touched = True  # it may go on, or end and leave memory: no longer checked
    if not rig.live_touched:
        assert after.live == before.live, "the live session changed"
        live_rows = {k for k in before.inbox if k[0] == "live"}
        assert live_rows <= after.inbox, "an inbox row of the live session went missing"
    rig.examples += 1


async def post_messages(rig: Rig, body: bytes) -> None:
    before = await snapshot(rig)
    async with asyncio.timeout(ANSWER_S):
        resp = await rig.client.post("/messages", data=body)
        answer = await resp.read()
    assert resp.status < 500, (resp.status, answer[:300])
    event(f"/messages answered {resp.status}")
    taken: list[list[Any]] = []
    if resp.status == 200:
        taken = taken_rows(unpack(body), unpack(answer))
        event(f"/messages: {len(taken)} taken")
    else:
        assert 400 <= resp.status < 500, resp.status
        if len(body) > LIMITS.max_body_bytes:
            assert resp.status == 413, resp.status
    await check_after(rig, before, taken)


async def send_frame(rig: Rig, frame: bytes, batch_id: Any = None, *, structured: bool) -> None:
    """One frame over a fresh stream: an answer for it, or (for a frame the receiver cannot
    number, or one over the size limit) a clean close."""
    before = await snapshot(rig)
    taken: list[list[Any]] = []
    async with asyncio.timeout(ANSWER_S):
        ws = await rig.client.ws_connect("/stream")
        try:
            await ws.send_bytes(frame)
            reply = await ws.receive()
        finally:
            await ws.close()
    if reply.type is aiohttp.WSMsgType.BINARY:
        answered_id, answer = unpack(reply.data)
        if structured and isinstance(batch_id, int):
            assert answered_id == batch_id
        if isinstance(answer, list):
            taken = taken_rows(unpack(frame)[1], answer)
            event(f"/stream answered: {len(taken)} taken")
        else:  # the whole batch refused, or "full, retry": nothing taken either way
            assert isinstance(answer, str | dict) and answer, answer
    else:
        event("/stream closed")
        assert reply.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), reply
        if len(frame) > LIMITS.max_frame_bytes:
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG, ws.close_code
        else:
            assert not structured, f"a numbered frame was not answered: {reply}"
    await check_after(rig, before, taken)


# -- the tests ---------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one node for all examples, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def rig_a(store_kind: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with serving("a", store_kind, tmp_path) as rig:
        yield rig
        assert rig.examples > 0


@pytest.fixture
async def rig_b(store_kind: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with serving("b", store_kind, tmp_path) as rig:
        yield rig
        assert rig.examples > 0


@FUZZ
@given(batch=batches("a"))
async def test_fuzzed_batches_posted_to_the_initiator_leave_it_whole(rig_a, batch):
    await post_messages(rig_a, pack(batch))


@FUZZ
@example(batch=START_TIME_2_63)
@example(batch=START_TIME_2_64)
@given(batch=batches("b"))
async def test_fuzzed_batches_posted_to_a_participant_leave_it_whole(rig_b, batch):
    await post_messages(rig_b, pack(batch))


@FUZZ
@given(batch_id=st.integers(0, 2**32) | JUNK, batch=batches("a"))
async def test_fuzzed_stream_frames_to_the_initiator_leave_it_whole(rig_a, batch_id, batch):
    await send_frame(rig_a, pack([batch_id, batch]), batch_id, structured=True)


@FUZZ
@example(batch_id=1, batch=START_TIME_2_63)
@example(batch_id=2, batch=START_TIME_2_64)
@given(batch_id=st.integers(0, 2**32) | JUNK, batch=batches("b"))
async def test_fuzzed_stream_frames_to_a_participant_leave_it_whole(rig_b, batch_id, batch):
    await send_frame(rig_b, pack([batch_id, batch]), batch_id, structured=True)


@FUZZ
@given(body=raw_bodies("b"))
async def test_raw_bytes_posted_as_messages_are_refused_with_a_4xx_or_refusals(rig_b, body):
    await post_messages(rig_b, body)


@FUZZ
@given(frame=raw_bodies("b"))
async def test_raw_bytes_sent_as_a_stream_frame_are_answered_or_close_the_stream(rig_b, frame):
    await send_frame(rig_b, frame, structured=False)
