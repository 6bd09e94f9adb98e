"""Choreographies the sidecar processes of the runtime tests load by module name.

The sidecars import this module (tests/runtime is on their PYTHONPATH). Every choreography
here runs over roles a, b and c, each hosted by its own sidecar next to its own tiny service
(tests/runtime/tiny_service.py): payload `{"abort": true}` makes a service refuse a step (409)
and `{"bad": true}` makes it fail one (400).
"""

from __future__ import annotations

import random
from typing import Any

from accompanist_py.choreography import Choreography, choreography
from accompanist_py.saga import Transaction


@choreography(roles=["a", "b", "c"], initiator="a")
async def route3(op, request):
    """a records the request and picks a route; the other two roles serve it in that order."""
    await op.call("a", "record", request)
    route = await op.broadcast("a", await op.locally("a", lambda r: r["route"], request))
    if route == "left":
        at_b = await op.comm("a", "b", request)
        served = await op.call("b", "left", at_b)
        at_c = await op.comm("b", "c", served)
        value = await op.locally("c", lambda s: s["echo"]["n"] * 10, at_c)
        back = await op.comm("c", "a", value)
    else:
        at_c = await op.comm("a", "c", request)
        served = await op.call("c", "right", at_c)
        at_b = await op.comm("c", "b", served)
        value = await op.locally("b", lambda s: s["echo"]["n"] + 1, at_b)
        back = await op.comm("b", "a", value)
    return await op.locally("a", lambda v: {"route": route, "value": v}, back)


def _ring(first: str, second: str, third: str) -> Choreography:
    @choreography(roles=["a", "b", "c"], initiator=first, name=f"ring_from_{first}")
    async def ring(op, n):
        at_second = await op.comm(first, second, n)
        doubled = await op.call(
            second, "double", await op.locally(second, lambda v: {"n": v}, at_second, pure=True)
        )
        at_third = await op.comm(second, third, doubled)
        out = await op.locally(third, lambda r: r["echo"]["n"] * 2 + 1, at_third)
        return await op.comm(third, first, out)

    return ring


ring_from_a = _ring("a", "b", "c")
ring_from_b = _ring("b", "c", "a")
ring_from_c = _ring("c", "a", "b")


def _refuses(order: dict[str, Any], step: str) -> dict[str, bool]:
    return {"abort": order.get("abort_at") == step}


@choreography(roles=["a", "b", "c"], initiator="a")
async def saga3(op, order):
    """A three-role saga; `order["abort_at"]` in (b, c, a_final) makes that step refuse."""
    reserved = await op.transact(
        "a",
        Transaction(
            "reserve", "reserve", "undo_reserve", await op.locally("a", _refuses, order, "a")
        ),
    )
    at_b = await op.comm("a", "b", order)
    await op.transact(
        "b",
        Transaction("charge", "charge", "undo_charge", await op.locally("b", _refuses, at_b, "b")),
    )
    at_c = await op.comm("b", "c", at_b)
    shipped = await op.transact(
        "c", Transaction("ship", "ship", "undo_ship", await op.locally("c", _refuses, at_c, "c"))
    )
    back = await op.comm("c", "a", shipped)
    confirmed = await op.transact(
        "a",
        Transaction(
            "confirm",
            "confirm",
            "undo_confirm",
            await op.locally("a", _refuses, order, "a_final"),
        ),
    )
    return await op.locally(
        "a",
        lambda r, s, c: {"outcome": "committed", "keys": [r["key"], s["key"], c["key"]]},
        reserved,
        back,
        confirmed,
    )


@choreography(roles=["a", "b", "c"], initiator="a")
async def failing_saga(op, order):
    """a and b commit, then a's service rejects a bad request (400): the session fails."""
    await op.transact("a", Transaction("reserve", "reserve", "undo_reserve", {"n": 1}))
    at_b = await op.comm("a", "b", order)
    await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))
    back = await op.comm("b", "a", at_b)
    return await op.call("a", "validate", await op.locally("a", lambda o: {"bad": True}, back))


@choreography(roles=["a", "b"], initiator="a")
async def random_send(op, label):
    """Deliberately wrong: reads randomness outside `locally`, so a replay sends another value."""
    value = random.random()
    return await op.comm("a", "b", value)


@choreography(roles=["a", "b"], initiator="a")
async def random_echo(op, label):
    """As `random_send`, but b echoes the value and a records the echo at its service."""
    value = random.random()
    at_b = await op.comm("a", "b", value)
    echoed = await op.comm("b", "a", at_b)
    await op.call("a", "note", await op.locally("a", lambda v: {"echoed": v}, echoed, pure=True))
    return at_b


# -- for tests/runtime/test_runtime_outcome_protocol.py -----------------------------------------


@choreography(roles=["a", "b", "c"], initiator="a")
async def hand_off(op, order):
    """a reserves and hands the order to b, which charges: a then waits only for b's vote."""
    await op.transact("a", Transaction("reserve", "reserve", "undo_reserve", {"n": 1}))
    await op.comm("a", "b", order)
    return await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))


@choreography(roles=["a", "b", "c"], initiator="a")
async def stalled_saga(op, order):
    """As saga3 without refusals, but a's last step is `stall`, which its service answers with
    503 until healed (tests/runtime/tiny_service.py): b and c vote while a is still busy."""
    await op.transact("a", Transaction("reserve", "reserve", "undo_reserve", {"n": 1}))
    at_b = await op.comm("a", "b", order)
    await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))
    await op.comm("b", "c", at_b)
    shipped = await op.transact("c", Transaction("ship", "ship", "undo_ship", {"n": 3}))
    back = await op.comm("c", "a", shipped)
    return await op.call("a", "stall", back)


def _sick_undo(commit: str) -> Choreography:
    @choreography(roles=["a", "b", "c"], initiator="a", name=f"sick_undo_{commit}")
    async def sick_undo(op, order):
        """a commits `commit`, whose compensation misbehaves until healed; b then refuses."""
        await op.transact("a", Transaction(commit, commit, f"undo_{commit}", {"n": 1}))
        await op.comm("a", "b", order)
        return await op.transact(
            "b", Transaction("charge", "charge", "undo_charge", {"abort": True})
        )

    return sick_undo


sick_undo_fragile = _sick_undo("fragile")  # its undo answers a malformed 200 until healed
sick_undo_picky = _sick_undo("picky")  # its undo answers 400 until healed


@choreography(roles=["a", "b", "c"], initiator="a")
async def double_charge(op, order):
    """An authoring mistake: b runs two transactions named "charge" in one session."""
    await op.transact("a", Transaction("reserve", "reserve", "undo_reserve", {"n": 1}))
    at_b = await op.comm("a", "b", order)
    await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 1}))
    await op.comm("b", "c", at_b)
    await op.transact("b", Transaction("charge", "charge", "undo_charge", {"n": 2}))
    shipped = await op.transact("c", Transaction("ship", "ship", "undo_ship", {"n": 3}))
    return await op.comm("c", "a", shipped)
