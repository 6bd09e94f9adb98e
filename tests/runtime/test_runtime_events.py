"""Session events (accompanist_py.events): every role of a real cluster tells the same story.

A committed, a compensated and a crash-recovered saga3 (tests/runtime/runtime_choreographies.py)
each leave at every role the expected sequence of events, numbered from 1 in order, of the
documented vocabulary; every message one role recorded as sent, its peer recorded as received
(same peer, seq and kind). Events survive a restart, stay within their bound and go with their
session's record; the in-memory mode records them too. Who may read them is tested with the
other client routes in test_runtime_security.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from typing import Any

import pytest
from runtime_choreographies import saga3
from runtime_cluster import ROLES, Cluster

from accompanist_py.errors import BusinessAbort, ConfigError
from accompanist_py.events import KINDS, Event
from accompanist_py.node import NodeConfig
from accompanist_py.sidecar import config
from accompanist_py.store import MemoryStore, SessionRecord, SessionState, SQLiteStore
from accompanist_py.testing import LocalCluster

MESSAGES = ("sent", "received")
Events = dict[str, list[dict[str, Any]]]


def check_shape(events: list[dict[str, Any]]) -> None:
    """Numbered 1, 2, ... in time order, each of a known kind with exactly its fields."""
    assert [e["n"] for e in events] == list(range(1, len(events) + 1)), events
    times = [e["t"] for e in events]
    assert times == sorted(times) and all(isinstance(t, float) for t in times), times
    for e in events:
        assert e["kind"] in KINDS, e
        assert set(e) - {"n", "t", "kind"} == KINDS[e["kind"]], e


def steps(events: list[dict[str, Any]]) -> list[tuple]:
    """What the role did, messages left out (their order across peers may vary)."""
    out = []
    for e in events:
        if e["kind"] in MESSAGES:
            continue
        detail = {k: v for k, v in e.items() if k not in ("n", "t", "kind", "latency_ms")}
        out.append((e["kind"], *(detail[k] for k in sorted(detail))))
    return out


def messages(events: list[dict[str, Any]]) -> set[tuple]:
    return {(e["kind"], e["peer"], e["seq"], e["message"]) for e in events if e["kind"] in MESSAGES}


def check_messages_match(timelines: Events) -> None:
    """Every message sent at one role is received at its peer, and nothing else is received."""
    sent = {
        (role, e["peer"], e["seq"], e["message"])
        for role, events in timelines.items()
        for e in events
        if e["kind"] == "sent"
    }
    received = {
        (e["peer"], role, e["seq"], e["message"])
        for role, events in timelines.items()
        for e in events
        if e["kind"] == "received"
    }
    assert sent == received, (sent ^ received, timelines)
    for role, events in timelines.items():
        recorded = Counter(messages(events))
        assert max(recorded.values(), default=1) == 1, (role, events)


async def timelines(cluster: Cluster, http, sid: str) -> Events:
    out = {}
    for role in ROLES:
        events = await cluster.session_events(http, role, sid)
        assert events is not None, (role, sid)
        check_shape(events)
        out[role] = events
    check_messages_match(out)
    return out


def call(op: str, status: str = "ok") -> list[tuple]:
    return [("call_start", op), ("call_end", 1, op, status)]


def txn(op: str) -> list[tuple]:
    return [*call(op), ("committed", op, op)]


def started(by: str | None, origin: str) -> tuple:
    return ("started", by, "saga3", origin)


COMMITTED_STEPS = {
    "a": [started(None, "client"), *txn("reserve"), *txn("confirm"), ("finished", "completed")],
    "b": [started("a", "peer"), *txn("charge"), ("finished", "completed")],
    "c": [started("b", "peer"), *txn("ship"), ("finished", "completed")],
}
COMMITTED_MESSAGES = {
    "a": {
        ("sent", "b", 0, "data"),
        ("received", "c", 0, "data"),
        ("received", "b", -1, "done"),
        ("received", "c", -1, "done"),
        ("sent", "b", -3, "decision"),
        ("sent", "c", -3, "decision"),
    },
    "b": {
        ("received", "a", 0, "data"),
        ("sent", "c", 0, "data"),
        ("sent", "a", -1, "done"),
        ("received", "a", -3, "decision"),
    },
    "c": {
        ("received", "b", 0, "data"),
        ("sent", "a", 0, "data"),
        ("sent", "a", -1, "done"),
        ("received", "a", -3, "decision"),
    },
}


def check_committed(found: Events) -> None:
    for role in ROLES:
        assert steps(found[role]) == COMMITTED_STEPS[role], (role, found[role])
        assert messages(found[role]) == COMMITTED_MESSAGES[role], (role, found[role])


def undo(name: str) -> list[tuple]:
    return [*call(f"undo_{name}"), ("compensated", f"undo_{name}", name)]


def abort(origin: str) -> tuple:
    return ("abort", False, origin, "ship declined")


async def test_a_committed_saga_tells_the_same_story_at_every_role(make_cluster):
    cluster = make_cluster()
    async with cluster.http() as http:
        answer = await cluster.run(http, "saga3", "ok-1", [{"abort_at": None}])
        assert answer["state"] == "completed"
        await cluster.wait_terminal(http, ["ok-1"])
        found = await timelines(cluster, http, "ok-1")
        check_committed(found)
        # A finished session's events are read back from the file, also after a restart.
        cluster.sidecars["a"].stop()
        await cluster.restart_sidecar("a")
        assert await cluster.session_events(http, "a", "ok-1") == found["a"]


async def test_a_refusal_mid_saga_shows_the_abort_and_each_compensation(make_cluster):
    cluster = make_cluster()
    async with cluster.http() as http:
        answer = await cluster.run(http, "saga3", "no-1", [{"abort_at": "c"}])
        assert answer["state"] == "compensated"
        await cluster.wait_terminal(http, ["no-1"])
        found = await timelines(cluster, http, "no-1")
    assert steps(found["a"]) == [
        started(None, "client"),
        *txn("reserve"),
        abort("c"),
        *undo("reserve"),
        ("finished", "compensated"),
    ]
    assert steps(found["b"]) == [
        started("a", "peer"),
        *txn("charge"),
        abort("a"),
        *undo("charge"),
        ("finished", "compensated"),
    ]
    assert steps(found["c"]) == [
        started("b", "peer"),
        *call("ship", "refused"),
        ("refused", "ship", "ship declined", "ship"),
        abort("c"),
        ("finished", "compensated"),
    ]
    # b's vote may or may not have left before the decision reached it.
    optional = {("sent", "a", -1, "done"), ("received", "b", -1, "done")}
    assert messages(found["a"]) - optional == {
        ("sent", "b", 0, "data"),
        ("received", "c", -2, "abort"),
        ("sent", "b", -3, "decision"),
        ("sent", "c", -3, "decision"),
    }
    assert messages(found["b"]) - optional == {
        ("received", "a", 0, "data"),
        ("sent", "c", 0, "data"),
        ("received", "a", -3, "decision"),
    }
    assert messages(found["c"]) == {
        ("received", "b", 0, "data"),
        ("sent", "a", -2, "abort"),
        ("received", "a", -3, "decision"),
    }


async def test_a_crash_mid_session_adds_restart_and_replay_after_the_events_before_it(
    make_cluster,
):
    # b dies once its charge call has answered, before the answer is journaled.
    cluster = make_cluster({"b": {"after_call": 1}})
    async with cluster.http() as http:
        run = asyncio.create_task(cluster.run(http, "saga3", "crash-1", [{"abort_at": None}]))
        assert await cluster.sidecars["b"].wait_exit(60) is not None, "b did not die"
        await cluster.restart_sidecar("b")
        assert (await run)["state"] == "completed"
        await cluster.wait_terminal(http, ["crash-1"])
        found = await timelines(cluster, http, "crash-1")
    for role in ("a", "c"):
        assert steps(found[role]) == COMMITTED_STEPS[role]
        assert messages(found[role]) == COMMITTED_MESSAGES[role]
    b = found["b"]
    assert messages(b) == COMMITTED_MESSAGES["b"]
    kinds = [e["kind"] for e in b]
    restart = kinds.index("restart")
    # Before the crash: the start, a's message and the call that was cut short (its end may
    # not have reached the disk before the kill).
    assert kinds[:restart] in (
        ["started", "received", "call_start"],
        ["started", "received", "call_start", "call_end"],
    ), b
    assert b[restart]["restarts"] == 1 and b[restart]["state"] == "running"
    replay = b[restart + 1]
    assert replay["kind"] == "replay" and replay["received"] == 1 and replay["steps"] >= 1, b
    after = steps(b[restart + 2 :])
    assert after == [*txn("charge"), ("finished", "completed")], b


async def test_the_default_mode_records_events_in_memory(make_cluster):
    cluster = make_cluster(modes={r: "default" for r in ROLES})
    async with cluster.http() as http:
        await cluster.run(http, "saga3", "mem-1", [{"abort_at": None}])
        await cluster.wait_terminal(http, ["mem-1"])
        check_committed(await timelines(cluster, http, "mem-1"))
        assert await cluster.session_events(http, "a", "nobody-knows-this-one") is None


async def test_recent_sessions_are_listed_newest_first_with_their_state_per_role(make_cluster):
    cluster = make_cluster(events={"enabled": False})
    url = f"{cluster.sidecar_url('a')}/sessions"
    async with cluster.http() as http:
        for sid, at in (("l-1", None), ("l-2", "b"), ("l-3", None)):
            await cluster.run(http, "saga3", sid, [{"abort_at": at}])
        async with http.get(url, params={"limit": "2"}) as resp:
            listed = (await resp.json())["sessions"]
        assert [s["session_id"] for s in listed] == ["l-3", "l-2"]
        assert [s["roles"] for s in listed] == [{"a": "completed"}, {"a": "compensated"}]
        async with http.get(url, params={"state": "compensated"}) as resp:
            assert [s["session_id"] for s in (await resp.json())["sessions"]] == ["l-2"]
        async with http.get(url, params={"limit": "0"}) as resp:
            assert resp.status == 400
        # Off: the route answers, with nothing recorded.
        assert await cluster.session_events(http, "a", "l-1") == []


# -- in one process: the bound, the switch, retention, old files ---------------------------------


def services() -> dict[str, Any]:
    def handler(operation: str, payload: Any, key: str) -> Any:
        if isinstance(payload, dict) and payload.get("abort"):
            raise BusinessAbort(operation, "refused")
        return {"key": key}

    return {r: handler for r in ROLES}


async def test_a_role_records_at_most_its_bound_then_one_truncated_event():
    config = NodeConfig(receive_timeout_s=10.0, max_events_per_session=5)
    async with LocalCluster([saga3], services=services(), config=config) as cluster:
        await cluster.run(saga3, {"abort_at": None}, session_id="bounded")
        for role, node in cluster.nodes.items():
            events = (await node.session_events("bounded"))[role]
            assert [e.n for e in events] == [1, 2, 3, 4, 5, 6], role
            assert events[-1].kind == "truncated" and events[-1].fields == {"limit": 5}


async def test_events_off_records_nothing():
    config = NodeConfig(receive_timeout_s=10.0, events_enabled=False)
    async with LocalCluster([saga3], services=services(), config=config) as cluster:
        await cluster.run(saga3, {"abort_at": "c"}, session_id="quiet")
        for role, node in cluster.nodes.items():
            assert await node.session_events("quiet") == {role: []}


def _finished_with_events(store: MemoryStore, sid: str) -> None:
    store.save_session(SessionRecord(sid, "a", "saga"))
    for n in (1, 2):
        store.put_event(sid, "a", Event(n, store.clock(), "finished", {"state": "completed"}))
    store.save_session(SessionRecord(sid, "a", "saga", state=SessionState.COMPLETED))


async def test_events_go_with_their_sessions_record_in_memory():
    now = [1000.0]
    store = MemoryStore()
    store.clock = lambda: now[0]
    _finished_with_events(store, "s")
    now[0] += 100
    store.prune(60, 600)  # past the working retention only: the record and events stay
    assert len(await store.read_events("s", "a")) == 2
    now[0] += 600
    store.prune(60, 600)
    assert await store.read_events("s", "a") == []


async def test_events_go_with_their_sessions_record_on_disk(tmp_path):
    now = [1000.0]
    store = SQLiteStore(tmp_path / "s.db")
    store.clock = lambda: now[0]
    await store.open()
    try:
        _finished_with_events(store, "s")
        store.forget_working_state("s", "a")
        assert [e.n for e in await store.read_events("s", "a")] == [1, 2]  # from the file
        now[0] += 700
        store.prune(60, 600)
        for _ in range(200):  # pruning runs on the writer when it is idle
            await store.flush()
            rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT * FROM events").fetchall()
            if not rows:
                break
            await asyncio.sleep(0.01)
        assert rows == []
    finally:
        await store.close()


async def test_a_store_file_from_before_events_gains_their_table(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE sessions (session_id TEXT, role TEXT, choreography TEXT, state TEXT, "
        "args BLOB, result BLOB, restarts INTEGER, created REAL, updated REAL, owner TEXT, "
        "PRIMARY KEY (session_id, role));"
        "INSERT INTO sessions VALUES ('live', 'a', 'saga', 'running', NULL, NULL, 0, 1.0, 1.0, "
        "NULL);"
    )
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.event_count("live", "a") == 0
        store.put_event("live", "a", Event(1, 2.0, "restart", {"restarts": 1, "state": "running"}))
        await store.flush()
    finally:
        await store.close()
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        assert [e.to_json() for e in await reopened.read_events("live", "a")] == [
            {"n": 1, "t": 2.0, "kind": "restart", "restarts": 1, "state": "running"}
        ]
    finally:
        await reopened.close()


@pytest.mark.parametrize("bad", [{"enable": True}, {"max_per_session": 0}, {"enabled": "yes"}])
def test_an_events_table_with_a_typo_or_a_bad_value_is_refused(bad):
    raw = {
        "name": "a",
        "roles": ["a"],
        "listen": "127.0.0.1:7001",
        "choreographies": ["runtime_choreographies"],
        "mode": "default",
        "events": bad,
    }
    with pytest.raises(ConfigError, match=r"\[events\]"):
        config.parse(raw)
