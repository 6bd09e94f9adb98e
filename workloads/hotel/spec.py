"""The hotel saga, step by step: which role does what, and with which payload.

    check_user   (frontend)     {"user"} -> {"user"}                       409 "unknown user"
    nearby       (search)       {"city", "in_night", "nights"}
        -> {"city", "hotels": [{"hotel", "rate"}, ...]}  cheapest first   409 "no availability"
    reserve_room (reservation)  {"user", "hotel": first nearby hotel, "in_night", "nights"}
        -> {"booking_id", "hotel", "in_night", "nights", "amount"}       409 "room gone"
    book_seat    (flight)       {"user", "flight"}
        -> {"booking_id", "flight", "amount"}                             409 "flight full"
    charge       (payment)      {"account": user, "amount": room.amount + seat.amount}
        -> {"account", "amount", "balance"}                               409 "payment declined"

check_user and nearby are read-only: a 409 there ends the saga "rejected" with the error as
its reason. Compensations, run in reverse order: cancel_room, cancel_seat, refund, each with
the body {"commit_key": "{saga_id}:{step}"} (see workloads.saga.undo_payload).
"""

from __future__ import annotations

from typing import Any

from workloads.saga import Step

Json = dict[str, Any]


def check_user_payload(request: Json) -> Json:
    return {"user": request["user"]}


def nearby_payload(request: Json) -> Json:
    return {"city": request["city"], "in_night": request["in_night"], "nights": request["nights"]}


def reserve_room_payload(request: Json, nearby: Json) -> Json:
    return {
        "user": request["user"],
        "hotel": nearby["hotels"][0]["hotel"],
        "in_night": request["in_night"],
        "nights": request["nights"],
    }


def book_seat_payload(request: Json) -> Json:
    return {"user": request["user"], "flight": request["flight"]}


def charge_payload(request: Json, room: Json, seat: Json) -> Json:
    return {"account": request["user"], "amount": room["amount"] + seat["amount"]}


STEPS = (
    Step("check_user", "frontend", "check_user", None, (), check_user_payload),
    Step("nearby", "search", "nearby", None, (), nearby_payload),
    Step(
        "reserve_room",
        "reservation",
        "reserve_room",
        "cancel_room",
        ("nearby",),
        reserve_room_payload,
    ),
    Step("book_seat", "flight", "book_seat", "cancel_seat", (), book_seat_payload),
    Step("charge", "payment", "charge", "refund", ("reserve_room", "book_seat"), charge_payload),
)
