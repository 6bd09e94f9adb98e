"""Sagas over the in-memory network: commits, compensations in reverse order exactly once,
and agreement of every role on the outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from accompanist_py.choreography import choreography
from accompanist_py.errors import BusinessAbort, ServiceError
from accompanist_py.saga import Transaction
from accompanist_py.testing import LocalCluster, run_local


class Services:
    """In-process stand-ins for the services of every role, recording each call in order.

    A payload `{"abort": true}` is refused (a business abort); `{"bad": true}` fails with a
    non-retryable error.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, Any]] = []  # (role, operation, key, payload)

    def handler(self, role: str):
        def handle(operation: str, payload: Any, key: str) -> Any:
            self.calls.append((role, operation, key, payload))
            if isinstance(payload, dict) and payload.get("abort"):
                raise BusinessAbort(operation, f"{operation} refused")
            if isinstance(payload, dict) and payload.get("bad"):
                raise ServiceError(operation, 400, "bad request")
            return {"done": operation, "key": key}

        return handle

    def for_roles(self, *roles: str) -> dict[str, Any]:
        return {r: self.handler(r) for r in roles}

    def at(self, role: str) -> list[str]:
        """The operations called at `role`, in order."""
        return [op for r, op, _, _ in self.calls if r == role]

    def keys(self) -> list[str]:
        return [key for _, _, key, _ in self.calls]


def _refuses(order: dict[str, Any], role: str) -> dict[str, bool]:
    return {"abort": order.get("abort_at") == role}


def _step(name: str, payload: Any) -> Transaction:
    return Transaction(name, name, f"undo_{name}", payload)


@choreography(roles=["a", "b", "c", "d"], initiator="a")
async def trip(op, order):
    """a books two things, b and c one each, d one last; `abort_at` names the refusing role."""
    await op.transact("a", _step("flight", {"n": 1}))
    await op.transact("a", _step("hotel", {"n": 2}))
    at_b = await op.comm("a", "b", order)
    await op.transact("b", _step("car", await op.locally("b", _refuses, at_b, "b")))
    at_c = await op.comm("b", "c", at_b)
    await op.transact("c", _step("insurance", await op.locally("c", _refuses, at_c, "c")))
    at_d = await op.comm("c", "d", at_c)
    receipt = await op.transact("d", _step("receipt", await op.locally("d", _refuses, at_d, "d")))
    return await op.comm("d", "a", receipt)


async def test_a_saga_without_refusals_commits_every_step_once_and_completes_everywhere():
    services = Services()
    async with LocalCluster([trip], services=services.for_roles(*"abcd")) as cluster:
        results = await cluster.run(trip, {"abort_at": None}, session_id="t1")
        assert cluster.states("t1") == dict.fromkeys("abcd", "completed")
    assert results["a"] == {"done": "receipt", "key": "t1:receipt"}
    assert services.at("a") == ["flight", "hotel"]
    assert services.at("b") == ["car"]
    assert services.at("c") == ["insurance"]
    assert services.at("d") == ["receipt"]
    assert services.keys() == ["t1:flight", "t1:hotel", "t1:car", "t1:insurance", "t1:receipt"]


@pytest.mark.parametrize(
    ("abort_at", "expected"),
    [
        (
            "b",
            {
                "a": ["flight", "hotel", "undo_hotel", "undo_flight"],
                "b": ["car"],
                "c": [],
                "d": [],
            },
        ),
        (
            "c",
            {
                "a": ["flight", "hotel", "undo_hotel", "undo_flight"],
                "b": ["car", "undo_car"],
                "c": ["insurance"],
                "d": [],
            },
        ),
    ],
)
async def test_a_refusal_compensates_every_committed_step_at_every_role_in_reverse_order_once(
    abort_at, expected
):
    services = Services()
    async with LocalCluster([trip], services=services.for_roles(*"abcd")) as cluster:
        results = await cluster.run(trip, {"abort_at": abort_at}, session_id="t2")
        states = cluster.states("t2")
    refused = {"b": "car", "c": "insurance"}[abort_at]
    for role in "abc":
        assert states[role] == "compensated", states
        assert results[role] == {"outcome": "compensated", "reason": f"{refused} refused"}
    # d never took part: it either never heard of the session or heard only the abort.
    assert states["d"] in (None, "compensated")
    assert results["d"] in (None, {"outcome": "compensated", "reason": f"{refused} refused"})
    assert {r: services.at(r) for r in "abcd"} == expected


async def test_a_compensation_names_the_commit_it_undoes_under_the_undo_key():
    services = Services()
    async with LocalCluster([trip], services=services.for_roles(*"abcd")) as cluster:
        await cluster.run(trip, {"abort_at": "c"}, session_id="t3")
    undo = {op: (key, payload) for _, op, key, payload in services.calls if op.startswith("undo")}
    assert set(undo) == {"undo_hotel", "undo_flight", "undo_car"}
    for name in ("hotel", "flight", "car"):
        key, payload = undo[f"undo_{name}"]
        assert key == f"t3:{name}:undo"
        assert payload["commit_key"] == f"t3:{name}"


async def test_a_refusal_by_the_last_role_compensates_all_others_and_every_role_agrees():
    services = Services()
    async with LocalCluster([trip], services=services.for_roles(*"abcd")) as cluster:
        results = await cluster.run(trip, {"abort_at": "d"}, session_id="t4")
        assert cluster.states("t4") == dict.fromkeys("abcd", "compensated")
    assert {r: results[r]["outcome"] for r in "abcd"} == dict.fromkeys("abcd", "compensated")
    assert services.at("c") == ["insurance", "undo_insurance"]
    assert services.at("d") == ["receipt"]
    undos = [op for _, op, _, _ in services.calls if op.startswith("undo")]
    assert sorted(undos) == sorted(["undo_hotel", "undo_flight", "undo_car", "undo_insurance"])


@choreography(roles=["a", "b"], initiator="a")
async def fails_after_commit(op, order):
    await op.transact("a", Transaction("hold", "hold", "undo_hold", {"n": 1}))
    at_b = await op.comm("a", "b", order)
    await op.transact("b", Transaction("take", "take", "undo_take", at_b))


def test_a_commit_that_fails_with_an_error_is_compensated_too_and_the_outcome_is_failed():
    services = Services()
    results = run_local(fails_after_commit, {"bad": True}, services=services.for_roles("a", "b"))
    for role in "ab":
        assert results[role]["outcome"] == "failed"
        assert "bad request" in results[role]["reason"]
    # The failed commit may have taken effect, so it is compensated as well (the service
    # tombstones it if it never happened).
    assert services.at("b") == ["take", "undo_take"]
    assert services.at("a") == ["hold", "undo_hold"]


@choreography(roles=["a", "b"], initiator="a")
async def keyed_calls(op, n):
    await op.call("a", "first", {"n": n})
    await op.call("a", "second", {"n": n}, key="mine")
    at_b = await op.comm("a", "b", n)
    await op.call("b", "third", at_b)


async def test_service_calls_are_keyed_by_session_and_step_or_the_given_key():
    services = Services()
    async with LocalCluster([keyed_calls], services=services.for_roles("a", "b")) as cluster:
        await cluster.run(keyed_calls, 1, session_id="k1")
    assert services.keys() == ["k1:1", "k1:mine", "k1:4"]


@choreography(roles=["a", "b"], initiator="a")
async def sends_then_aborts(op, order):
    await op.comm("a", "b", order)
    await op.transact("a", Transaction("hold", "hold", "undo_hold", {"abort": True}))


async def test_a_role_told_to_abort_before_its_part_started_still_finishes():
    # Regression: b's first message and the ABORT right behind it can both arrive before the
    # event loop has run the session task the first one spawned. Cancelling that task before
    # its first step skipped `_run` entirely: b never compensated and stayed "aborting".
    services = Services()
    async with LocalCluster([sends_then_aborts], services=services.for_roles("a", "b")) as c:
        await c.nodes["a"].start_session("sends_then_aborts", [{}], session_id="x1")
        deadline = time.monotonic() + 10
        while any(s not in ("compensated", None) for s in c.states("x1").values()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert c.states("x1") == {"a": "compensated", "b": "compensated"}
