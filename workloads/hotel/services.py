"""The hotel saga's five services: frontend, search, reservation, flight and payment.

    python -m workloads.hotel.services \
        --service frontend|search|reservation|flight|payment --port P --db FILE \
        [--seed 1] [--size 10000] [--abort-rate 0.1]

frontend and search are read-only. reservation and flight are the same kind of thing, a
bounded inventory: a booking takes one unit of each of its slots (a hotel's night, a flight's
seat) and fails when any slot is full; cancelling gives the units back. payment is the shared
ledger of workloads.ledger. HTTP, idempotency and tombstones come from workloads.service_kit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from workloads import ledger, service_kit
from workloads.hotel.data import NIGHTS, Catalogue, catalogue
from workloads.service_kit import (
    Abort,
    BadRequest,
    Commit,
    Payload,
    Query,
    Result,
    ServiceDef,
    field,
    positive_int,
)

_FRONTEND_SCHEMA = "CREATE TABLE IF NOT EXISTS users (user TEXT PRIMARY KEY);"


def _seed_frontend(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
    users = catalogue(seed, size, abort_rate).users
    db.executemany("INSERT INTO users (user) VALUES (?)", [(u,) for u in users])


def _check_user(db: sqlite3.Connection, payload: Payload) -> Result:
    user = field(payload, "user", str)
    if db.execute("SELECT 1 FROM users WHERE user = ?", (user,)).fetchone() is None:
        raise Abort("unknown user")
    return {"user": user}


FRONTEND = ServiceDef(
    name="frontend",
    schema=_FRONTEND_SCHEMA,
    seed=_seed_frontend,
    queries=(Query("check_user", _check_user),),
)

_SEARCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS hotels (
    hotel TEXT PRIMARY KEY,
    city TEXT NOT NULL,
    rate INTEGER NOT NULL,
    listed INTEGER NOT NULL
);
"""


def _seed_search(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
    data = catalogue(seed, size, abort_rate)
    db.executemany(
        "INSERT INTO hotels VALUES (?, ?, ?, ?)",
        [(h, city, rate, int(data.listed[h])) for h, (city, rate) in data.hotels.items()],
    )


def _stay(payload: Payload) -> tuple[int, int]:
    in_night = field(payload, "in_night", int)
    nights = positive_int(payload, "nights")
    if in_night < 0 or in_night + nights > NIGHTS:
        raise BadRequest(f"stay must lie within nights 0..{NIGHTS - 1}")
    return in_night, nights


def _nearby(db: sqlite3.Connection, payload: Payload) -> Result:
    city = field(payload, "city", str)
    _stay(payload)
    # Search answers from its own index, which may be stale: the reservation service decides.
    hotels = [
        {"hotel": r["hotel"], "rate": r["rate"]}
        for r in db.execute(
            "SELECT hotel, rate FROM hotels WHERE city = ? AND listed ORDER BY rate, hotel", (city,)
        )
    ]
    if not hotels:
        raise Abort("no availability")
    return {"city": city, "hotels": hotels}


SEARCH = ServiceDef(
    name="search", schema=_SEARCH_SCHEMA, seed=_seed_search, queries=(Query("nearby", _nearby),)
)

_INVENTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS prices (resource TEXT PRIMARY KEY, price INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS slots (
    slot TEXT PRIMARY KEY,
    capacity INTEGER NOT NULL,
    booked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bookings (
    key TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    resource TEXT NOT NULL,
    slots TEXT NOT NULL,
    amount INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);
"""

# (catalogue) -> [(resource, price, {slot: capacity})]
Stock = Callable[[Catalogue], list[tuple[str, int, dict[str, int]]]]


def night_slot(hotel: str, night: int) -> str:
    """The slot of one night at a hotel."""
    return f"{hotel}@{night}"


def room_inventory(data: Catalogue) -> list[tuple[str, int, dict[str, int]]]:
    """Every hotel with its nightly rate and its rooms per night."""
    return [
        (h, rate, {night_slot(h, n): data.rooms[h] for n in range(NIGHTS)})
        for h, (_, rate) in data.hotels.items()
    ]


def seat_inventory(data: Catalogue) -> list[tuple[str, int, dict[str, int]]]:
    """Every flight with its fare and its seats."""
    return [(f, fare, {f: seats}) for f, (seats, fare) in data.flights.items()]


def _book(
    db: sqlite3.Connection,
    key: str,
    user: str,
    resource: str,
    slots: list[str],
    amount: int,
    full: str,
) -> None:
    for slot in slots:
        row = db.execute("SELECT capacity, booked FROM slots WHERE slot = ?", (slot,)).fetchone()
        if row["booked"] >= row["capacity"]:
            raise Abort(full)
    db.executemany("UPDATE slots SET booked = booked + 1 WHERE slot = ?", [(s,) for s in slots])
    db.execute(
        "INSERT INTO bookings (key, user, resource, slots, amount) VALUES (?, ?, ?, ?, ?)",
        (key, user, resource, json.dumps(slots), amount),
    )


def _cancel(db: sqlite3.Connection, commit_key: str, payload: Payload) -> Result:
    slots = json.loads(
        db.execute("SELECT slots FROM bookings WHERE key = ?", (commit_key,)).fetchone()["slots"]
    )
    db.executemany("UPDATE slots SET booked = booked - 1 WHERE slot = ?", [(s,) for s in slots])
    db.execute("UPDATE bookings SET cancelled = 1 WHERE key = ?", (commit_key,))
    return {"released": slots}


def _price(db: sqlite3.Connection, resource: str, unknown: str) -> int:
    row = db.execute("SELECT price FROM prices WHERE resource = ?", (resource,)).fetchone()
    if row is None:
        raise Abort(unknown)
    return row["price"]


def _reserve_room(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
    user = field(payload, "user", str)
    hotel = field(payload, "hotel", str)
    in_night, nights = _stay(payload)
    amount = _price(db, hotel, "unknown hotel") * nights
    _book(
        db,
        key,
        user,
        hotel,
        [night_slot(hotel, n) for n in range(in_night, in_night + nights)],
        amount,
        "room gone",
    )
    return {
        "booking_id": key,
        "hotel": hotel,
        "in_night": in_night,
        "nights": nights,
        "amount": amount,
    }


def _book_seat(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
    user = field(payload, "user", str)
    flight = field(payload, "flight", str)
    amount = _price(db, flight, "unknown flight")
    _book(db, key, user, flight, [flight], amount, "flight full")
    return {"booking_id": key, "flight": flight, "amount": amount}


def _inventory_service(name: str, stock: Stock, commit: Commit) -> ServiceDef:
    def seed(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
        for resource, price, slots in stock(catalogue(seed, size, abort_rate)):
            db.execute("INSERT INTO prices VALUES (?, ?)", (resource, price))
            db.executemany("INSERT INTO slots (slot, capacity) VALUES (?, ?)", slots.items())

    def state(db: sqlite3.Connection) -> Result:
        return {
            "slots": {
                r["slot"]: {"capacity": r["capacity"], "booked": r["booked"]}
                for r in db.execute("SELECT * FROM slots")
            },
            "bookings": [
                {
                    "key": r["key"],
                    "user": r["user"],
                    "resource": r["resource"],
                    "slots": json.loads(r["slots"]),
                    "amount": r["amount"],
                    "cancelled": bool(r["cancelled"]),
                }
                for r in db.execute("SELECT * FROM bookings ORDER BY key")
            ],
        }

    return ServiceDef(
        name=name, schema=_INVENTORY_SCHEMA, seed=seed, commits=(commit,), state=state
    )


RESERVATION = _inventory_service(
    "reservation", room_inventory, Commit("reserve_room", _reserve_room, "cancel_room", _cancel)
)
FLIGHT = _inventory_service(
    "flight", seat_inventory, Commit("book_seat", _book_seat, "cancel_seat", _cancel)
)
PAYMENT = ledger.ledger_service(
    lambda seed, size, abort_rate: catalogue(seed, size, abort_rate).balances,
    decline_reason="payment declined",
)

SERVICES = (FRONTEND, SEARCH, RESERVATION, FLIGHT, PAYMENT)

if __name__ == "__main__":
    service_kit.main(SERVICES)
