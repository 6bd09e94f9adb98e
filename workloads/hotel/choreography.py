"""The hotel saga as a choreography over frontend, search, reservation, flight and payment.

    frontend: check the user            (409 -> "rejected", nobody else ever hears of it)
    frontend --request-->  search: nearby hotels with a free room
    search decides: available or not, and tells the frontend only (knowledge of choice)
      no  -> frontend answers "rejected: no availability"; reservation, flight and payment
             never take part, and receive no message
      yes -> search --hotel--> reservation: reserve room --> flight: book seat
             --> payment: charge the total --> frontend answers "committed"

Roles that join after a choice learn it from the message that brings them in (every message
carries the choices its sender knows), so they branch with a plain `if` without being told
separately. Steps, payloads and keys come from `workloads.hotel.spec`, as in the Temporal twin.
"""

from __future__ import annotations

from typing import Any

from accompanist_py import BusinessAbort, Located, Op, Transaction, choreography
from workloads.hotel.spec import STEPS
from workloads.saga import COMMITTED, REJECTED, Step

CHECK_USER, NEARBY, RESERVE_ROOM, BOOK_SEAT, CHARGE = STEPS


def _txn(step: Step, payload: Located) -> Transaction:
    assert step.undo is not None
    return Transaction(step.name, step.operation, step.undo, payload)


async def _lookup(op: Op, step: Step, payload: Located) -> Located:
    """A read-only step: its result, or {"rejected": reason} on a business refusal."""
    try:
        return await op.call(step.role, step.operation, payload, key=step.name)
    except BusinessAbort as refusal:
        return Located(frozenset({step.role}), step.role, {"rejected": refusal.reason})


@choreography(
    roles=("frontend", "search", "reservation", "flight", "payment"), initiator="frontend"
)
async def hotel_saga(op: Op, request: Located) -> Any:
    """Check, search, reserve, book, charge; the result is {"outcome", "reason"}."""
    payload = await op.locally("frontend", CHECK_USER.payload, request, pure=True)
    user = await _lookup(op, CHECK_USER, payload)
    refusal = await op.broadcast("frontend", _refusal(user), to=[])
    if refusal:
        return await op.locally("frontend", _rejected, refusal, pure=True)

    at_search = await op.comm("frontend", "search", request)
    payload = await op.locally("search", NEARBY.payload, at_search, pure=True)
    hotels = await _lookup(op, NEARBY, payload)
    refusal = await op.broadcast("search", _refusal(hotels), to=["frontend"])
    if refusal:
        return await op.locally("frontend", _rejected, refusal, pure=True)

    order = await op.locally(
        "search", lambda r, h: {"request": r, "nearby": h}, at_search, hotels, pure=True
    )
    order = await op.comm("search", "reservation", order)
    payload = await op.locally(
        "reservation", lambda o: RESERVE_ROOM.build(o["request"], o), order, pure=True
    )
    room = await op.transact("reservation", _txn(RESERVE_ROOM, payload))

    order = await op.locally(
        "reservation",
        lambda o, r: {"request": o["request"], "reserve_room": r},
        order,
        room,
        pure=True,
    )
    order = await op.comm("reservation", "flight", order)
    payload = await op.locally(
        "flight", lambda o: BOOK_SEAT.build(o["request"], o), order, pure=True
    )
    seat = await op.transact("flight", _txn(BOOK_SEAT, payload))

    order = await op.locally("flight", lambda o, s: {**o, "book_seat": s}, order, seat, pure=True)
    order = await op.comm("flight", "payment", order)
    payload = await op.locally("payment", lambda o: CHARGE.build(o["request"], o), order, pure=True)
    charged = await op.transact("payment", _txn(CHARGE, payload))

    await op.comm("payment", "frontend", charged)
    return await op.locally("frontend", lambda: {"outcome": COMMITTED, "reason": None}, pure=True)


def _refusal(result: Located) -> str | None:
    """At the deciding role: the reason the saga cannot go on, or "" if it can."""
    return result.value.get("rejected", "") if result.is_here else None


def _rejected(reason: str) -> dict[str, Any]:
    return {"outcome": REJECTED, "reason": reason}
