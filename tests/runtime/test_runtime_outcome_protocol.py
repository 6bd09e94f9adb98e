"""The outcome protocol with real processes: one decider, durable before visible, no wait
without an end, and hostile bytes over HTTP, with `kill -9` (failpoints or from outside).

Each test runs its own cluster (tests/runtime/runtime_cluster.py: sidecars a, b, c, each
next to its tiny service) or a lone sidecar, with short timeouts: `receive_s`, and the
initiator's decision deadline `decision_s` and a waiting participant's `query_s` in
[timeouts]. Every assertion about time polls with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from runtime_cluster import ROLES, TERMINAL, Cluster, Process, free_port
from test_runtime_hostile_input import (
    ABORT,
    DECISION,
    Case,
    control,
    malformed,
    pack,
    row,
)

ABORTED = frozenset({"aborting", "compensated", "failed"})
FAST = {"decision_s": 60.0, "query_s": 0.5}  # no decision deadline within a test's run
COMMITTED = {"a": {"reserve": 1, "confirm": 1}, "b": {"charge": 1}, "c": {"ship": 1}}


# -- helpers -----------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[Any]], what: str, deadline_s: float = 30.0
) -> Any:
    """Await `probe` until it returns something truthy (returned); fail after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            value = await probe()
            if value:
                return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s:g}s: {what}")
        await asyncio.sleep(0.05)


async def applied(cluster: Cluster, http: aiohttp.ClientSession, sid: str) -> dict[str, Counter]:
    """How many times each operation took effect for one session, at each role's service."""
    out = {}
    for role in ROLES:
        effects = (await cluster.effects(http, role))["effects"]
        out[role] = Counter(e["operation"] for e in effects if e["key"].startswith(f"{sid}:"))
    return out


def undone_exactly(effects: Counter) -> bool:
    """Every commit that took effect was compensated exactly once."""
    commits = {op: n for op, n in effects.items() if not op.startswith("undo_")}
    return all(n == 1 and effects[f"undo_{op}"] == 1 for op, n in commits.items()) and sum(
        effects.values()
    ) == 2 * len(commits)


async def final_states(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    sid: str,
    roles: tuple[str, ...] = ROLES,
    deadline_s: float = 60.0,
) -> dict[str, str]:
    statuses = await cluster.wait_terminal(http, [sid], roles=roles, deadline_s=deadline_s)
    return {r: s["state"] for r, s in statuses[sid].items()}


async def post_rows(http: aiohttp.ClientSession, url: str, rows: list[Any]) -> tuple[int, Any]:
    """POST a batch of wire rows to a sidecar: (status, [(index, reason)] or the error body)."""
    async with http.post(f"{url}/messages", data=msgpack.packb(rows, use_bin_type=True)) as resp:
        body = await resp.read()
        if resp.status == 200:
            return 200, [tuple(r) for r in msgpack.unpackb(body, raw=False)]
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body[:300]


@contextlib.contextmanager
def background(coro: Awaitable[Any]) -> Iterator[asyncio.Future[Any]]:
    """A client request running while the test kills and restarts processes."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()


# -- one decider, durable before visible -------------------------------------------------------


async def test_an_abort_is_durable_before_any_role_hears_of_it(make_cluster, http):
    # c is down longer than receive_s: a's receive times out and a decides abort; it dies the
    # instant that decision is durable, before any DECISION leaves (failpoint after_decision).
    cluster = make_cluster({"a": {"after_decision": 1}}, receive_s=2.0, timeouts=FAST)
    cluster.sidecars["c"].kill()
    sid = "abort-durable"
    with background(cluster.run(http, "saga3", sid, [{"abort_at": None}])) as client:
        code = await cluster.sidecars["a"].wait_exit(60)
        assert code == -signal.SIGKILL, cluster.logs()
        at_b = await cluster.status(http, "b", sid)
        assert at_b is not None and at_b["state"] not in ABORTED, at_b
        assert (await applied(cluster, http, sid))["b"] == {"charge": 1}
        await cluster.restart_sidecar("c")
        await cluster.restart_sidecar("a")
        answer = await client
    # On restart a must not replay into a commit now that c's message can arrive.
    assert answer["state"] == "failed", answer
    assert await final_states(cluster, http, sid) == dict.fromkeys(ROLES, "failed")
    effects = await applied(cluster, http, sid)
    assert effects["a"] == {"reserve": 1, "undo_reserve": 1}, effects
    assert effects["b"] == {"charge": 1, "undo_charge": 1}, effects
    assert undone_exactly(effects["c"]), effects


async def test_an_initiator_killed_right_after_a_timeout_abort_does_not_replay_into_a_commit(
    make_cluster, http
):
    # As above without failpoints: kill -9 from outside the moment an abort is visible at a.
    # Several sessions time out together, so that the kill lands inside some abort's window;
    # one killed before its own timeout may then commit, but only at every role alike.
    cluster = make_cluster(receive_s=2.0, timeouts=FAST)
    cluster.sidecars["c"].kill()
    sids = [f"abort-then-kill-{i}" for i in range(8)]
    clients = [cluster.run(http, "saga3", sid, [{"abort_at": None}]) for sid in sids]
    with background(asyncio.gather(*clients)) as answers:

        async def seen_aborting() -> dict[str, str]:
            states = await asyncio.gather(*(cluster.status(http, "a", sid) for sid in sids))
            return {
                st["session_id"]: st["state"] for st in states if st and st["state"] != "running"
            }

        aborted = await eventually(seen_aborting, "a aborts after its receives timed out")
        cluster.sidecars["a"].kill()
        await cluster.restart_sidecar("c")
        await cluster.restart_sidecar("a")
        answered = {a["session_id"]: a["state"] for a in await answers}
    statuses = await cluster.wait_terminal(http, sids, deadline_s=60.0)
    final = {sid: {r: s["state"] for r, s in statuses[sid].items()} for sid in sids}
    # Every role, and the client, agree; effects match the outcome.
    for sid in sids:
        outcome = final[sid]["a"]
        assert final[sid] == dict.fromkeys(ROLES, outcome), (sid, final[sid])
        assert answered[sid] == outcome, (sid, answered[sid], final[sid])
        effects = await applied(cluster, http, sid)
        if outcome == "completed":
            assert effects == COMMITTED, (sid, effects)
        else:
            assert outcome == "failed", (sid, final[sid])
            assert all(undone_exactly(effects[r]) for r in ROLES), (sid, effects)
            assert effects["b"] == {"charge": 1, "undo_charge": 1}, (sid, effects)
    # And an abort a client could already see (GET /sessions) was durable: it stands.
    reverted = {sid: (seen, final[sid]["a"]) for sid, seen in aborted.items()}
    reverted = {sid: v for sid, v in reverted.items() if v[1] != "failed"}
    assert reverted == {}, f"GET /sessions showed a state a crash then undid: {reverted}"


async def test_a_participant_that_voted_never_aborts_on_its_own(make_cluster, http):
    # b dies once its vote is durable, before its DONE leaves (failpoint after_vote); it comes
    # back while the initiator is down, for longer than b's receive_s: b (and c, which voted
    # too) must wait for the initiator's decision, asking again, and never abort by itself.
    cluster = make_cluster(
        {"b": {"after_vote": 1}},
        receive_s=2.0,
        timeouts=FAST,
        role_timeouts={"a": {"receive_s": 30.0}},
    )
    sid = "voted"
    with background(cluster.run(http, "saga3", sid, [{"abort_at": None}])) as client:
        code = await cluster.sidecars["b"].wait_exit(60)
        assert code == -signal.SIGKILL, cluster.logs()
        cluster.sidecars["a"].kill()
        await cluster.restart_sidecar("b")
        end = time.monotonic() + 3 * cluster.receive_s
        while time.monotonic() < end:
            for role in "bc":
                st = await cluster.status(http, role, sid)
                assert st is None or st["state"] not in ABORTED, (role, st)
            await asyncio.sleep(0.1)
        await cluster.restart_sidecar("a")
        answer = await client
    assert answer["state"] == "completed", answer
    assert await final_states(cluster, http, sid) == dict.fromkeys(ROLES, "completed")
    assert await applied(cluster, http, sid) == COMMITTED


async def test_a_commit_decision_survives_a_crash_before_it_leaves_and_a_late_abort_changes_nothing(
    make_cluster, http
):
    cluster = make_cluster({"a": {"after_decision": 1}}, receive_s=10.0, timeouts=FAST)
    sid = "decided-commit"
    with background(cluster.run(http, "saga3", sid, [{"abort_at": None}])) as client:
        code = await cluster.sidecars["a"].wait_exit(60)
        assert code == -signal.SIGKILL, cluster.logs()
        for role in "bc":  # the decision is durable, and nobody has heard of it yet
            st = await cluster.status(http, role, sid)
            assert st is not None and st["state"] not in TERMINAL | ABORTED, (role, st)
        await cluster.restart_sidecar("a")
        # A veto landing after the commit decision changes nothing.
        veto = {"reason": "late veto", "failed": False, "involved": ["c"]}
        late = control(ABORT, veto, session=sid, chor="saga3", headers={"t": time.time()})
        code, _ = await post_rows(http, cluster.sidecar_url("a"), [late])
        assert code == 200
        answer = await client
    assert answer["state"] == "completed", answer
    assert await final_states(cluster, http, sid) == dict.fromkeys(ROLES, "completed")
    assert await applied(cluster, http, sid) == COMMITTED


async def test_a_session_acknowledged_with_202_survives_a_kill_9_right_after(make_cluster, http):
    cluster = make_cluster(receive_s=10.0, timeouts=FAST)
    url = f"{cluster.sidecar_url('a')}/sessions/saga3"
    acknowledged: list[str] = []

    async def start(sid: str) -> None:
        body = {"session_id": sid, "args": [{"abort_at": None}], "wait": False}
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.post(url, json=body) as resp:
                if resp.status in (200, 202):
                    acknowledged.append(sid)
                    cluster.sidecars["a"].kill()  # right after the first acknowledgement

    await asyncio.gather(*(start(f"ack-{i}") for i in range(20)))
    assert acknowledged
    await cluster.restart_sidecar("a")
    for sid in acknowledged:
        assert await cluster.status(http, "a", sid) is not None, (
            f"{sid} was acknowledged, then lost"
        )
    statuses = await cluster.wait_terminal(http, acknowledged, deadline_s=60.0)
    for sid in acknowledged:
        states = {s["state"] for s in statuses[sid].values()}
        assert len(states) == 1, (sid, statuses[sid])


# -- no wait without an end --------------------------------------------------------------------


async def test_participants_of_a_session_a_default_mode_initiator_forgot_end_compensated(
    make_cluster, http
):
    # a keeps nothing across a restart ("default" mode). b and c vote while a is still busy
    # (its last call stalls); a is killed and restarted, and has forgotten the session: asked
    # again by b and c, it answers "presumed abort", and they compensate.
    cluster = make_cluster(receive_s=10.0, timeouts=FAST, modes={"a": "default"})
    sid = "forgotten"
    url = f"{cluster.sidecar_url('a')}/sessions/stalled_saga"
    async with http.post(url, json={"session_id": sid, "args": [{}], "wait": False}) as resp:
        assert resp.status == 202, await resp.text()

    async def both_voted() -> bool:
        states = [await cluster.status(http, r, sid) for r in "bc"]
        return all(st is not None and st["state"] != "running" for st in states)

    await eventually(both_voted, "b and c vote")
    cluster.sidecars["a"].kill()
    await cluster.restart_sidecar("a")
    # Within a few query intervals; the deadline is generous.
    states = await final_states(cluster, http, sid, roles=("b", "c"), deadline_s=30.0)
    assert states["b"] == states["c"] in ("compensated", "failed"), states
    effects = await applied(cluster, http, sid)
    assert effects["b"] == {"charge": 1, "undo_charge": 1}, effects
    assert effects["c"] == {"ship": 1, "undo_ship": 1}, effects


async def test_a_participant_that_never_returns_fails_the_session_at_the_decision_deadline(
    make_cluster, http
):
    cluster = make_cluster(receive_s=10.0, timeouts={"decision_s": 3.0, "query_s": 0.5})
    cluster.sidecars["b"].kill()
    sid = "deadline"
    try:  # the client's request itself must end: bound it, not just the client's retries
        answer = await asyncio.wait_for(cluster.run(http, "hand_off", sid, [{}]), 30.0)
    except TimeoutError:
        raise AssertionError("no answer 30 s after the start, decision_s = 3") from None
    assert answer["state"] in ("compensated", "failed"), answer
    assert (await applied(cluster, http, sid))["a"] == {"reserve": 1, "undo_reserve": 1}
    await cluster.restart_sidecar("b")
    states = await final_states(cluster, http, sid, roles=("a", "b"))
    assert states["b"] == states["a"] == answer["state"], states
    assert undone_exactly((await applied(cluster, http, sid))["b"])


@pytest.mark.parametrize(
    ("chor", "txn"),
    [("sick_undo_fragile", "fragile"), ("sick_undo_picky", "picky")],
    ids=["malformed-200", "4xx"],
)
async def test_a_failing_compensation_is_retried_visibly_until_it_succeeds(
    make_cluster, http, chor, txn
):
    # b refuses its step, so a compensates `txn`, whose undo misbehaves until healed.
    cluster = make_cluster(receive_s=10.0, timeouts=FAST)
    sid = f"sick-{txn}"
    with background(cluster.run(http, chor, sid, [{}], deadline_s=60.0)) as client:

        async def retried() -> dict[str, Any] | None:
            st = await cluster.status(http, "a", sid)
            if st is not None and st["state"] in TERMINAL:
                raise AssertionError(f"ended before its compensation succeeded: {st}")
            stuck = (st or {}).get("stuck")
            return st if isinstance(stuck, dict) and stuck.get("attempts", 0) >= 2 else None

        st = await eventually(retried, f"a shows undo_{txn} stuck and retried")
        assert st["state"] == "aborting", st
        assert st["stuck"]["transaction"] == txn, st
        assert isinstance(st["stuck"]["attempts"], int), st
        assert isinstance(st["stuck"]["error"], str) and st["stuck"]["error"], st
        metrics = await cluster.metrics(http, "a")
        assert metrics.get("accompanist_compensations_stuck", 0) > 0, metrics
        assert not client.done()
        (cluster.dir / "service-a.db.healed").touch()
        answer = await client
    assert answer["state"] == "compensated", answer
    assert await final_states(cluster, http, sid, roles=("a", "b")) == {
        "a": "compensated",
        "b": "compensated",
    }
    assert (await applied(cluster, http, sid))["a"] == {txn: 1, f"undo_{txn}": 1}


async def test_two_transactions_named_alike_at_one_role_fail_the_session_naming_the_transaction(
    make_cluster, http
):
    # b's failure reaches a as an ABORT; a's receive timeout is only the fallback, long enough
    # that a loaded machine never lets it fire first.
    cluster = make_cluster(receive_s=120.0, timeouts=FAST)
    sid = "dup"
    answer = await cluster.run(http, "double_charge", sid, [{}])
    assert answer["state"] == "failed", answer
    reason = str(answer["result"])
    assert "charge" in reason and "twice" in reason.lower(), answer
    assert await final_states(cluster, http, sid) == dict.fromkeys(ROLES, "failed")
    effects = await applied(cluster, http, sid)
    assert effects["a"] == {"reserve": 1, "undo_reserve": 1}, effects
    assert effects["b"] == {"charge": 1, "undo_charge": 1}, effects
    assert undone_exactly(effects["c"]), effects


# -- hostile bytes at a lone sidecar -----------------------------------------------------------

LONE = """
name = "b"
roles = ["b"]
listen = "127.0.0.1:{port}"
choreographies = ["runtime_choreographies"]
mode = "{mode}"
{top}
[store]
path = "lone-b.db"

[peers]
a = "{dead}"
c = "{dead}"

[timeouts]
receive_s = 30.0
query_s = 0.5
retry_initial_s = 0.02
retry_max_s = 0.25

[limits]
max_payload_bytes = 4096
"""


class Lone:
    """One sidecar hosting role b, whose peers a and c never answer (nor does any service)."""

    def __init__(self, dirpath: Path, *, mode: str = "fault-tolerant", top: str = "") -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.db = dirpath / "lone-b.db"
        config = dirpath / "lone-b.toml"
        dead = f"http://127.0.0.1:{free_port()}"
        config.write_text(LONE.format(port=port, mode=mode, top=top, dead=dead))
        self.proc = Process(
            "lone sidecar b",
            [sys.executable, "-m", "accompanist_py.sidecar", "--config", str(config)],
            dirpath / "lone-b.log",
        )

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.proc.start()

        async def healthy() -> bool:
            assert self.proc.alive(), f"exited with {self.proc.returncode}\n{self.proc.tail()}"
            async with http.get(f"{self.url}/health") as resp:
                return resp.status == 200

        await eventually(healthy, "the lone sidecar is healthy")

    async def session(self, http: aiohttp.ClientSession, sid: str) -> dict[str, Any] | None:
        async with http.get(f"{self.url}/sessions/{sid}") as resp:
            return None if resp.status == 404 else await resp.json()


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[Lone]:
    sidecar = Lone(tmp_path)
    try:
        yield sidecar
    finally:
        sidecar.proc.stop()


def echo(session: str) -> list[Any]:
    """A well-formed first message of a random_echo session at b: b echoes, votes and waits."""
    return row(chor="random_echo", session=session, payload=pack(0.5), headers={"t": time.time()})


def wire_cases() -> list[Case]:
    """Every malformed variant a sidecar hosting b can be sent, each for its own session."""
    cases = [c for c in malformed("saga3") if c.row[3] != "a"]
    over = row(chor="saga3", payload=pack(b"x" * 5000))
    cases.append(Case("payload-over-the-configured-limit", over, ("payload",)))
    for i, case in enumerate(cases):
        if case.row[1] == "fresh":
            case.row[1] = f"poison-{i}"
    # Today's store writer ends the process on this one: send it last.
    return sorted(cases, key=lambda c: c.id == "seq-2**63")


async def test_a_sidecar_refuses_every_malformed_message_keeps_running_and_restarts_cleanly(
    lone, http
):
    await lone.start(http)
    problems: dict[str, str] = {}
    for case in wire_cases():
        if not lone.proc.alive():
            problems[case.id] = "not sent: the sidecar had died"
            continue
        try:
            code, answer = await post_rows(http, lone.url, [case.row])
        except aiohttp.ClientError as exc:
            problems[case.id] = f"{exc!r}; sidecar alive: {lone.proc.alive()}"
            continue
        if code == 400 and isinstance(answer, dict):
            reason = answer.get("error")
        elif code == 200 and len(answer) == 1 and answer[0][0] == 0:
            reason = answer[0][1]
        else:
            problems[case.id] = f"answered {code}: {answer!r}"
            continue
        if not (isinstance(reason, str) and any(w in reason.lower() for w in case.words)):
            problems[case.id] = f"reason {reason!r} names none of {case.words}"
    assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())
    # One bad message does not hold up the good one beside it.
    bad = control(DECISION, 1, sender="a", receiver="b", session="mixed-bad", chor="saga3")
    code, refused = await post_rows(http, lone.url, [echo("echo-ok"), bad])
    assert code == 200 and [i for i, _ in refused] == [1], (code, refused)
    assert lone.proc.alive()

    assert lone.proc.stop() == 0, lone.proc.tail()
    with contextlib.closing(sqlite3.connect(lone.db)) as conn:
        assert {s for (s,) in conn.execute("SELECT session_id FROM sessions")} == {"echo-ok"}
        assert {s for (s,) in conn.execute("SELECT session_id FROM inbox")} == {"echo-ok"}
    await lone.start(http)
    assert await lone.session(http, "echo-ok") is not None
    assert await lone.session(http, "poison-0") is None


async def test_a_sidecar_starts_although_its_store_holds_a_row_it_cannot_rebuild(lone, http):
    await lone.start(http)
    assert await post_rows(http, lone.url, [echo("poisoned")]) == (200, [])

    async def voted() -> bool:
        st = await lone.session(http, "poisoned")
        return st is not None and st["state"] != "running"

    await eventually(voted, "b echoes and votes")
    assert lone.proc.stop() == 0, lone.proc.tail()
    with contextlib.closing(sqlite3.connect(lone.db)) as conn, conn:
        spoiled = conn.execute(
            "UPDATE inbox SET headers = x'01' WHERE session_id = 'poisoned'"
        ).rowcount
    assert spoiled == 1

    await lone.start(http)
    async with http.get(f"{lone.url}/health") as resp:
        health = await resp.json()
    entries = [q for q in health.get("quarantined", []) if q["session_id"] == "poisoned"]
    assert len(entries) == 1, health
    assert entries[0]["role"] == "b" and isinstance(entries[0]["reason"], str), entries
    assert entries[0]["reason"], entries
    async with http.get(f"{lone.url}/metrics") as resp:
        metrics = await resp.text()
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] not in "#")
    assert float(samples.get("accompanist_sessions_quarantined", "nan")) == 1, metrics
    assert (await lone.session(http, "poisoned"))["state"] == "failed"
    assert await post_rows(http, lone.url, [echo("after")]) == (200, [])
    assert lone.proc.stop() == 0, lone.proc.tail()
    await lone.start(http)


async def test_a_retention_longer_than_the_record_retention_is_refused_at_start(tmp_path, http):
    sidecar = Lone(tmp_path, mode="default", top="retention_s = 7200\nrecord_retention_s = 3600\n")
    sidecar.proc.start()
    try:

        async def exited() -> bool:
            if not sidecar.proc.alive():
                return True
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{sidecar.url}/health") as resp:
                    assert resp.status != 200, "the sidecar accepted the config and serves"
            return False

        await eventually(exited, "the sidecar exits")
        assert sidecar.proc.returncode == 2, sidecar.proc.tail()
        lines = sidecar.proc.log.read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sidecar: "), lines
        assert "retention" in lines[0], lines
    finally:
        sidecar.proc.stop()
