"""Consistency of a hotel run, judged from the services' final state.

    python -m workloads.hotel.checker --service reservation=URL --service flight=URL \
        --service payment=URL [--sagas sagas.csv|json] [--out report.json]

(frontend and search are read-only: pass them or not, they are not consulted.) Invariants:
no room night or flight over capacity, every slot's booked count equals its active bookings,
capacities are the seeded ones; money is conserved; every saga is all (a room, a seat and one
charge of their sum, all for the same user) or nothing; nothing happened for a saga the client
never sent; the client's outcomes agree with the effects. Exits 1 on any violation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from workloads import consistency, ledger
from workloads.consistency import Effect, Report, Violation, conservation, reconcile, seeding
from workloads.hotel.data import catalogue
from workloads.hotel.services import Stock, room_inventory, seat_inventory
from workloads.hotel.spec import STEPS

_INVENTORIES = (
    ("reservation", "reserve_room", room_inventory),
    ("flight", "book_seat", seat_inventory),
)


def _committed_disagreements(saga_id: str, found: Mapping[str, Effect]) -> list[str]:
    room, seat = found["reserve_room"].data, found["book_seat"].data
    charged = found["charge"].data
    checks = [
        (
            charged["amount"] == room["amount"] + seat["amount"],
            f"charged {charged['amount']} for a room of {room['amount']} "
            f"and a seat of {seat['amount']}",
        ),
        (
            charged["account"] == room["user"] == seat["user"],
            f"room for {room['user']}, seat for {seat['user']}, charged {charged['account']}",
        ),
    ]
    return [detail for ok, detail in checks if not ok]


def _capacity_violations(
    service: str, state: Mapping[str, Any], capacity: Mapping[str, int]
) -> list[Violation]:
    slots = state["slots"]
    violations = conservation(
        f"{service} capacity as seeded",
        capacity,
        {s: c["capacity"] for s, c in slots.items()},
        "capacity",
    )
    active: Counter[str] = Counter()
    for booking in state["bookings"]:
        if not booking["cancelled"]:
            active.update(booking["slots"])
    violations += conservation(
        f"{service} booked = active bookings",
        active,
        {s: c["booked"] for s, c in slots.items() if c["booked"]},
        "booked",
    )
    violations += [
        Violation(f"{service} capacity never exceeded", slot, f"{c['booked']} > {c['capacity']}")
        for slot, c in slots.items()
        if c["booked"] > c["capacity"]
    ]
    return violations


def _capacities(stock: Stock, data: Any) -> dict[str, int]:
    return {slot: cap for _, _, slots in stock(data) for slot, cap in slots.items()}


def check(
    state_by_service: Mapping[str, Any],
    seed: int | None = None,
    size: int | None = None,
    sent: Mapping[str, str | None] | None = None,
) -> Report:
    """Check the `GET /state` documents of reservation, flight and payment.

    `seed` and `size` default to what the services report; `sent` maps every saga id the
    client sent to the outcome it saw (None when unknown), or is None to skip those checks.
    """
    states = {name: state_by_service[name] for name in ("reservation", "flight", "payment")}
    seed, size, abort_rate = seeding(states, seed, size)
    data = catalogue(seed, size, abort_rate)
    effects = [*ledger.charge_effects(states["payment"])]
    for service, step, _ in _INVENTORIES:
        effects += [
            Effect(service, step, b["key"], not b["cancelled"], b)
            for b in states[service]["bookings"]
        ]
    report = reconcile("hotel", STEPS, effects, states, sent, _committed_disagreements)
    for service, _, stock in _INVENTORIES:
        report.violations += _capacity_violations(
            service, states[service], _capacities(stock, data)
        )
    report.violations += ledger.ledger_violations(states["payment"], data.balances)
    return report


if __name__ == "__main__":
    raise SystemExit(consistency.main(check))
