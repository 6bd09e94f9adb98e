"""Crash recovery with real `kill -9`: a sidecar dies at an exact point of its work (a failpoint)
or a service process is killed mid-batch; after a restart, every saga ends the same way at
every role, and every service effect is applied exactly as often as the outcome demands."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from typing import Any

import aiohttp
import pytest
from runtime_cluster import ROLES, Cluster

POINTS = (
    "before_call",
    "after_call",
    "after_journal",
    "before_send",
    "after_send",
    "during_compensation",
)

BATCH = 10
PLAN = (None, "b", "c", "a_final")  # session i refuses at PLAN[i % 4]

# How many times each failpoint is surely reached at each role by one batch (see PLAN and
# runtime_choreographies.saga3): the armed hit number is drawn from 1..cap, so the sidecar
# always dies, at a seeded instant early or late in the batch.
CAPS = {
    "before_call": {"a": 5, "b": 4, "c": 3},
    "after_call": {"a": 5, "b": 3, "c": 2},
    "after_journal": {"a": 5, "b": 4, "c": 3},
    "before_send": {"a": 5, "b": 4, "c": 3},
    "after_send": {"a": 2, "b": 2, "c": 2},
    "during_compensation": {"a": 3, "b": 2, "c": 2},
}

# What each refusal leaves applied at each role's service, per operation, once all is over.
EXPECTED_EFFECTS: dict[str | None, dict[str, dict[str, int]]] = {
    None: {"a": {"reserve": 1, "confirm": 1}, "b": {"charge": 1}, "c": {"ship": 1}},
    "b": {"a": {"reserve": 1, "undo_reserve": 1}, "b": {}, "c": {}},
    "c": {"a": {"reserve": 1, "undo_reserve": 1}, "b": {"charge": 1, "undo_charge": 1}, "c": {}},
    "a_final": {
        "a": {"reserve": 1, "undo_reserve": 1},
        "b": {"charge": 1, "undo_charge": 1},
        "c": {"ship": 1, "undo_ship": 1},
    },
}


def plan(i: int) -> str | None:
    return PLAN[i % len(PLAN)]


async def run_batch(cluster: Cluster, http: aiohttp.ClientSession, prefix: str) -> list[Any]:
    """Start the batch's sagas concurrently, each client retrying until a terminal answer."""
    return await asyncio.gather(
        *(
            cluster.run(http, "saga3", f"{prefix}-{i}", [{"abort_at": plan(i)}])
            for i in range(BATCH)
        )
    )


async def check_batch(
    cluster: Cluster, http: aiohttp.ClientSession, prefix: str, answers: list[Any]
) -> None:
    """Every saga ended alike at every role; every effect applied once, and undone iff aborted."""
    sids = [f"{prefix}-{i}" for i in range(BATCH)]
    for i, answer in enumerate(answers):
        expected = "completed" if plan(i) is None else "compensated"
        assert answer["state"] == expected, (sids[i], answer)
        if expected == "completed":
            assert answer["result"]["outcome"] == "committed"
        else:
            assert answer["result"]["outcome"] == "compensated"
    statuses = await cluster.wait_terminal(http, sids)
    for i, sid in enumerate(sids):
        states = {r: statuses[sid][r]["state"] for r in ROLES}
        expected = "completed" if plan(i) is None else "compensated"
        assert states == dict.fromkeys(ROLES, expected), (sid, states)
    effects = {r: await cluster.effects(http, r) for r in ROLES}
    for i, sid in enumerate(sids):
        applied = {
            r: dict(
                Counter(
                    e["operation"] for e in effects[r]["effects"] if e["key"].startswith(f"{sid}:")
                )
            )
            for r in ROLES
        }
        assert applied == EXPECTED_EFFECTS[plan(i)], (sid, plan(i), applied)


def hit_number(point: str, role: str) -> int:
    return random.Random(f"{point}/{role}").randint(1, CAPS[point][role])


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("point", POINTS)
async def test_a_sidecar_killed_at_a_failpoint_recovers_every_saga_without_duplicate_effects(
    make_cluster, http, point, role
):
    n = hit_number(point, role)
    cluster = make_cluster({role: {point: n}})
    batch = asyncio.ensure_future(run_batch(cluster, http, f"{point}-{role}"))
    try:
        code = await cluster.sidecars[role].wait_exit(90)
        assert code == -signal.SIGKILL, (
            f"sidecar {role} did not die at hit {n} of {point} (exit code {code})\n"
            + cluster.logs()
        )
        await cluster.restart_sidecar(role)
        answers = await batch
    finally:
        if not batch.done():
            batch.cancel()
    await check_batch(cluster, http, f"{point}-{role}", answers)


@pytest.mark.parametrize("role", ROLES)
async def test_a_service_killed_mid_batch_loses_and_duplicates_no_effect(make_cluster, http, role):
    cluster = make_cluster()
    prefix = f"service-{role}"
    # Kill the service as soon as the batch reaches the step before its first call, so that
    # most of the batch's calls to it still lie ahead.
    trigger = {"a": "a", "b": "a", "c": "b"}[role]
    batch = asyncio.ensure_future(run_batch(cluster, http, prefix))
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while not (await cluster.effects(http, trigger))["effects"]:
            assert asyncio.get_running_loop().time() < deadline, cluster.logs()
            await asyncio.sleep(0.005)
        cluster.services[role].kill()
        await asyncio.sleep(1.0)  # calls fail meanwhile; the sidecar keeps retrying
        await cluster.restart_service(role)
        answers = await batch
    finally:
        if not batch.done():
            batch.cancel()
    await check_batch(cluster, http, prefix, answers)


async def test_a_failed_saga_stays_failed_at_its_own_role_after_a_crash_during_compensation(
    make_cluster, http
):
    # Regression: the reason and the failed/business flag of an abort lived only in memory,
    # so a role that aborted on its own and crashed while compensating came back as
    # "compensated" with the reason "aborted before restart", while its peers said "failed".
    cluster = make_cluster({"a": {"during_compensation": 1}})
    start = asyncio.ensure_future(cluster.run(http, "failing_saga", "fails", [{}]))
    try:
        code = await cluster.sidecars["a"].wait_exit(60)
        assert code == -signal.SIGKILL, cluster.logs()
        await cluster.restart_sidecar("a")
        answer = await start
    finally:
        if not start.done():
            start.cancel()
    statuses = (await cluster.wait_terminal(http, ["fails"]))["fails"]
    assert {r: s["state"] for r, s in statuses.items()} == dict.fromkeys(ROLES, "failed")
    assert answer["result"]["outcome"] == "failed"
    assert "bad request" in answer["result"]["reason"]
    assert {
        r: dict(Counter(e["operation"] for e in (await cluster.effects(http, r))["effects"]))
        for r in "ab"
    } == {
        "a": {"reserve": 1, "undo_reserve": 1},
        "b": {"charge": 1, "undo_charge": 1},
    }
