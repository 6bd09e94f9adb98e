"""The durable store: a bad write fails alone, pruning keeps every tombstone still needed and
runs off the hot path, and settings that would let a tombstone die too early are refused."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from accompanist_py.message import Control, Kind, Message, encode_value
from accompanist_py.node import NodeConfig
from accompanist_py.store import MemoryStore, SessionRecord, SessionState, SQLiteStore


def _decision(session: str) -> Message:
    body = encode_value({"outcome": "commit", "reason": None, "failed": False})
    return Message("saga", session, "a", "b", Control.DECISION, Kind.CONTROL, body, {"t": 0.0})


async def test_a_write_that_fails_for_its_data_fails_only_itself(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        good = store.save_session(SessionRecord("s1", "a", "saga"))
        bad = store.put_journal("s1", "a", "1", "locally", 2**70)  # type: ignore[arg-type]
        after = store.save_session(SessionRecord("s2", "a", "saga"))
        await good
        with pytest.raises(RuntimeError, match="durable write failed"):
            await bad
        await after
    finally:
        await store.close()
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT session_id FROM sessions").fetchall()
    assert sorted(r[0] for r in rows) == ["s1", "s2"]


def test_a_finished_record_outlives_its_retention_while_one_of_its_messages_is_unacknowledged():
    now = [1000.0]
    store = MemoryStore()
    store.clock = lambda: now[0]
    rec = SessionRecord("s", "a", "saga", state=SessionState.COMPLETED)
    store.save_session(rec)
    store.put_outbox(_decision("s"))
    now[0] += 10_000
    assert store.prune(60, 600) == 0
    assert store.session("s", "a") is not None, "the tombstone went while b may still ask"
    store.ack_outbox(_decision("s"))
    assert store.prune(60, 600) == 1
    assert store.session("s", "a") is None


def test_pruning_takes_only_records_past_their_retention():
    now = [0.0]
    store = MemoryStore()
    store.clock = lambda: now[0]
    for i in range(5):
        now[0] = float(i * 100)
        store.save_session(SessionRecord(f"s{i}", "a", "saga", state=SessionState.FAILED))
    store.save_session(SessionRecord("live", "a", "saga"))
    now[0] = 1000.0
    assert store.prune(100, 750) == 3  # finished at 0, 100 and 200
    assert sorted(k[0] for k in store.sessions) == ["live", "s3", "s4"]


async def test_pruning_deletes_old_and_orphaned_rows_on_the_idle_writer(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        store.clock = lambda: 10_000.0
        old = SessionRecord("old", "b", "saga", state=SessionState.COMPLETED)
        store.save_session(old)
        store.put_inbox(Message("saga", "old", "a", "b", 0, Kind.DATA, b"\x01", {}))
        await store.flush()
        db = sqlite3.connect(path)
        # Rows of sessions with no record (left by older versions): pruned too.
        db.executemany(
            "INSERT INTO inbox VALUES (?,?,?,?,?,?,?,?)",
            [(f"ghost{i}", "b", "a", 0, "saga", "data", b"\x01", b"\x80") for i in range(1200)],
        )
        db.commit()
        store.clock = lambda: 20_000.0
        store.prune(60, 600)
        for _ in range(200):
            await store.flush()
            left = db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
            sessions = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            if left == 0 and sessions == 0:
                break
            await asyncio.sleep(0.01)
        assert (left, sessions) == (0, 0)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"retention_s": 700, "record_retention_s": 600}, "must not exceed"),
        ({"decision_timeout_s": 400, "record_retention_s": 600}, "at least twice"),
        ({"query_interval_s": 0}, "positive"),
    ],
)
def test_settings_that_would_let_a_tombstone_die_too_early_are_refused(settings, why):
    with pytest.raises(ValueError, match=why):
        NodeConfig(**settings)


async def test_a_store_file_from_before_session_owners_opens_and_keeps_its_sessions(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the sessions table as it was: no owner column
        conn.execute(
            "CREATE TABLE sessions (session_id TEXT, role TEXT, choreography TEXT, state TEXT, "
            "args BLOB, result BLOB, restarts INTEGER, created REAL, updated REAL, "
            "PRIMARY KEY (session_id, role))"
        )
        conn.execute(
            "INSERT INTO sessions VALUES ('old', 'a', 'saga', 'running', NULL, NULL, 0, 1, 1)"
        )
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.session("old", "a").owner is None
        rec = SessionRecord("new", "a", "saga", owner="gateway")
        await store.save_session(rec)
    finally:
        await store.close()
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        assert reopened.session("new", "a").owner == "gateway"
        assert reopened.session("old", "a").state == "running"
    finally:
        await reopened.close()
