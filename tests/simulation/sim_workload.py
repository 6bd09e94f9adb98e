"""The workload the simulated cluster runs: choreographies, requests, and what each must commit.

Two sagas written with accompanist_py, as a user would write them:

- `saga3`: a linear saga a -> b -> c -> a with a transaction at every hop (as in
  tests/runtime's saga3): reserve at a, charge at b, ship at c, confirm at a.
- `fan4`: four roles. a records a note (a plain journaled service call) and opens; a tells only
  b the route (a broadcast to a subset); b holds, then, by route, involves c (a message
  between two non-initiators) and possibly d, which answers b directly. a never hears from c
  or d: it learns they took part only from the roles each participant reports, so a completed
  session exercises termination detection by diffusion.

Every transaction's payload comes from `_step`, which asks the service to refuse (`abort`)
or to fail (`bad`) at the step the request names. `expected_commits` says which transactions
a session of a request commits if it completes; the checker holds completed sessions to it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from accompanist_py.choreography import Choreography, choreography
from accompanist_py.saga import Transaction


def _step(order: dict[str, Any], at: str) -> dict[str, Any]:
    return {
        "abort": order.get("abort_at") == at,
        "bad": order.get("fail_at") == at,
        "n": order["n"],
    }


@choreography(roles=["a", "b", "c"], initiator="a")
async def saga3(op, order):
    """reserve@a, charge@b, ship@c, confirm@a; `order` may make one of them refuse."""
    reserved = await op.transact(
        "a",
        Transaction("reserve", "reserve", "undo_reserve", await op.locally("a", _step, order, "a")),
    )
    at_b = await op.comm("a", "b", order)
    await op.transact(
        "b",
        Transaction("charge", "charge", "undo_charge", await op.locally("b", _step, at_b, "b")),
    )
    at_c = await op.comm("b", "c", at_b)
    shipped = await op.transact(
        "c", Transaction("ship", "ship", "undo_ship", await op.locally("c", _step, at_c, "c"))
    )
    back = await op.comm("c", "a", shipped)
    confirmed = await op.transact(
        "a",
        Transaction(
            "confirm", "confirm", "undo_confirm", await op.locally("a", _step, order, "a2")
        ),
    )
    return await op.locally(
        "a",
        lambda r, s, c: {"keys": [r["key"], s["key"], c["key"]]},
        reserved,
        back,
        confirmed,
    )


@choreography(roles=["a", "b", "c", "d"], initiator="a")
async def fan4(op, order):
    """open@a, hold@b, then take@c (routes c, cd) and drop@d (route cd); b answers a."""
    await op.call("a", "note", await op.locally("a", lambda o: {"n": o["n"]}, order, pure=True))
    opened = await op.transact(
        "a", Transaction("open", "open", "undo_open", await op.locally("a", _step, order, "a"))
    )
    route = await op.broadcast("a", await op.locally("a", lambda o: o["route"], order), to=["b"])
    at_b = await op.comm("a", "b", order)
    held = await op.transact(
        "b", Transaction("hold", "hold", "undo_hold", await op.locally("b", _step, at_b, "b"))
    )
    # c and d were not told the route: they learn it from the choices b's message carries.
    if route == "c" or route == "cd":
        at_c = await op.comm("b", "c", at_b)
        await op.transact(
            "c", Transaction("take", "take", "undo_take", await op.locally("c", _step, at_c, "c"))
        )
        if route == "cd":
            at_d = await op.comm("c", "d", at_c)
            await op.transact(
                "d",
                Transaction("drop", "drop", "undo_drop", await op.locally("d", _step, at_d, "d")),
            )
            await op.comm("d", "b", at_d)
    back = await op.comm("b", "a", held)
    return await op.locally("a", lambda o, b: {"opened": o["key"], "held": b["key"]}, opened, back)


CHOREOGRAPHIES: list[Choreography] = [saga3, fan4]
ROLES = ["a", "b", "c", "d"]

# Transactions of each choreography: name -> the role that commits it.
TRANSACTIONS: dict[str, dict[str, str]] = {
    "saga3": {"reserve": "a", "charge": "b", "ship": "c", "confirm": "a"},
    "fan4": {"open": "a", "hold": "b", "take": "c", "drop": "d"},
}

# The `_step` labels on each route, in order, and the transactions they belong to.
_PATHS: dict[tuple[str, str | None], list[tuple[str, str]]] = {
    ("saga3", None): [("a", "reserve"), ("b", "charge"), ("c", "ship"), ("a2", "confirm")],
    ("fan4", "b"): [("a", "open"), ("b", "hold")],
    ("fan4", "c"): [("a", "open"), ("b", "hold"), ("c", "take")],
    ("fan4", "cd"): [("a", "open"), ("b", "hold"), ("c", "take"), ("d", "drop")],
}


@dataclass(frozen=True)
class Request:
    """What the client asks for in one session."""

    choreography: str
    order: dict[str, Any]

    @property
    def path(self) -> list[tuple[str, str]]:
        return _PATHS[(self.choreography, self.order.get("route"))]

    def expected_commits(self) -> list[str]:
        """Transactions that every completed session of this request has committed."""
        return [txn for _, txn in self.path]

    def expected_outcome(self) -> str:
        """How a session of this request ends when nothing goes wrong on the way."""
        steps = [label for label, _ in self.path]
        if self.order.get("abort_at") in steps:
            return "compensated"
        if self.order.get("fail_at") in steps:
            return "failed"
        return "completed"

    def describe(self) -> str:
        o = self.order
        bits = [self.choreography]
        if o.get("route"):
            bits.append(f"route={o['route']}")
        if o.get("abort_at"):
            bits.append(f"abort_at={o['abort_at']}")
        if o.get("fail_at"):
            bits.append(f"fail_at={o['fail_at']}")
        return " ".join(bits)


def make_request(rng: random.Random, n: int) -> Request:
    """A random request: a choreography, a route, and sometimes a step that refuses."""
    if rng.random() < 0.5:
        chor, order = "saga3", {"n": n}
    else:
        chor, order = "fan4", {"n": n, "route": rng.choice(["b", "c", "cd"])}
    steps = [label for label, _ in _PATHS[(chor, order.get("route"))]]
    roll = rng.random()
    if roll < 0.3:
        order["abort_at"] = rng.choice(steps)
    elif roll < 0.35:
        order["fail_at"] = rng.choice(steps)
    return Request(chor, order)
