"""The warehouse saga's three services: warehouse (stock and shipping), payment and loyalty.

    python -m workloads.warehouse.services --service warehouse|payment|loyalty --port P \
        --db FILE [--seed 1] [--size 10000] [--abort-rate 0.1]

The HTTP contract, idempotency and tombstones come from workloads.service_kit; payment is the
shared ledger of workloads.ledger. Stock moves between three counters per item, stock ->
reserved -> shipped, and every compensation moves it back by exactly what its commit moved.
"""

from __future__ import annotations

import sqlite3

from workloads import ledger, service_kit
from workloads.service_kit import Abort, Commit, Payload, Result, ServiceDef, field, positive_int
from workloads.warehouse.data import catalogue, points_for

_WAREHOUSE_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item TEXT PRIMARY KEY,
    price INTEGER NOT NULL,
    stock INTEGER NOT NULL,
    reserved INTEGER NOT NULL DEFAULT 0,
    shipped INTEGER NOT NULL DEFAULT 0
);
-- state: reserved -> shipped (ship) or released (release); shipped -> reserved (cancel_shipment)
CREATE TABLE IF NOT EXISTS reservations (
    key TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    item TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shipments (
    key TEXT PRIMARY KEY,
    reservation_key TEXT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);
"""


def _seed_warehouse(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
    data = catalogue(seed, size, abort_rate)
    db.executemany(
        "INSERT INTO items (item, price, stock) VALUES (?, ?, ?)",
        [(item, data.prices[item], data.stock[item]) for item in sorted(data.prices)],
    )


def _reserve(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
    customer = field(payload, "customer", str)
    item = field(payload, "item", str)
    quantity = positive_int(payload, "quantity")
    row = db.execute("SELECT price, stock FROM items WHERE item = ?", (item,)).fetchone()
    if row is None:
        raise Abort("unknown item")
    if row["stock"] < quantity:
        raise Abort("out of stock")
    amount = row["price"] * quantity
    db.execute(
        "UPDATE items SET stock = stock - ?, reserved = reserved + ? WHERE item = ?",
        (quantity, quantity, item),
    )
    db.execute(
        "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, 'reserved')",
        (key, customer, item, quantity, amount),
    )
    return {
        "reservation_id": key,
        "item": item,
        "quantity": quantity,
        "unit_price": row["price"],
        "amount": amount,
    }


def _release(db: sqlite3.Connection, commit_key: str, payload: Payload) -> Result:
    row = db.execute(
        "SELECT item, quantity, state FROM reservations WHERE key = ?", (commit_key,)
    ).fetchone()
    if row["state"] != "reserved":
        # Compensations run in reverse order, so a shipped reservation means a missed
        # cancel_shipment: refuse rather than restock goods that left the building.
        raise Abort(f"reservation is {row['state']}; cancel the shipment first")
    db.execute(
        "UPDATE items SET stock = stock + ?, reserved = reserved - ? WHERE item = ?",
        (row["quantity"], row["quantity"], row["item"]),
    )
    db.execute("UPDATE reservations SET state = 'released' WHERE key = ?", (commit_key,))
    return {"released": row["quantity"]}


def _ship(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
    reservation_id = field(payload, "reservation_id", str)
    row = db.execute(
        "SELECT item, quantity, state FROM reservations WHERE key = ?", (reservation_id,)
    ).fetchone()
    if row is None:
        raise Abort("no such reservation")
    if row["state"] != "reserved":
        raise Abort(f"reservation is {row['state']}")
    db.execute(
        "UPDATE items SET reserved = reserved - ?, shipped = shipped + ? WHERE item = ?",
        (row["quantity"], row["quantity"], row["item"]),
    )
    db.execute("UPDATE reservations SET state = 'shipped' WHERE key = ?", (reservation_id,))
    db.execute("INSERT INTO shipments (key, reservation_key) VALUES (?, ?)", (key, reservation_id))
    return {
        "shipment_id": key,
        "reservation_id": reservation_id,
        "item": row["item"],
        "quantity": row["quantity"],
    }


def _cancel_shipment(db: sqlite3.Connection, commit_key: str, payload: Payload) -> Result:
    reservation_key = db.execute(
        "SELECT reservation_key FROM shipments WHERE key = ?", (commit_key,)
    ).fetchone()["reservation_key"]
    row = db.execute(
        "SELECT item, quantity FROM reservations WHERE key = ?", (reservation_key,)
    ).fetchone()
    # Back to reserved, not to stock: the saga's release compensation comes next.
    db.execute(
        "UPDATE items SET shipped = shipped - ?, reserved = reserved + ? WHERE item = ?",
        (row["quantity"], row["quantity"], row["item"]),
    )
    db.execute("UPDATE reservations SET state = 'reserved' WHERE key = ?", (reservation_key,))
    db.execute("UPDATE shipments SET cancelled = 1 WHERE key = ?", (commit_key,))
    return {"reservation_id": reservation_key}


def _warehouse_state(db: sqlite3.Connection) -> Result:
    return {
        "items": {
            r["item"]: {
                "price": r["price"],
                "stock": r["stock"],
                "reserved": r["reserved"],
                "shipped": r["shipped"],
            }
            for r in db.execute("SELECT * FROM items ORDER BY item")
        },
        "reservations": [dict(r) for r in db.execute("SELECT * FROM reservations ORDER BY key")],
        "shipments": [
            {
                "key": r["key"],
                "reservation_key": r["reservation_key"],
                "cancelled": bool(r["cancelled"]),
            }
            for r in db.execute("SELECT * FROM shipments ORDER BY key")
        ],
    }


WAREHOUSE = ServiceDef(
    name="warehouse",
    schema=_WAREHOUSE_SCHEMA,
    seed=_seed_warehouse,
    commits=(
        Commit("reserve", _reserve, "release", _release),
        Commit("ship", _ship, "cancel_shipment", _cancel_shipment),
    ),
    state=_warehouse_state,
)

PAYMENT = ledger.ledger_service(
    lambda seed, size, abort_rate: catalogue(seed, size, abort_rate).balances,
    decline_reason="insufficient balance",
)

_LOYALTY_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (account TEXT PRIMARY KEY, points INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS awards (
    key TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    points INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""


def _seed_loyalty(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
    members = catalogue(seed, size, abort_rate).balances
    db.executemany(
        "INSERT INTO members (account, points) VALUES (?, 0)",
        [(account,) for account in sorted(members)],
    )


def _award(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
    account = field(payload, "account", str)
    amount = positive_int(payload, "amount")
    row = db.execute("SELECT points FROM members WHERE account = ?", (account,)).fetchone()
    if row is None:
        raise Abort("unknown account")
    points = points_for(amount)
    db.execute("UPDATE members SET points = points + ? WHERE account = ?", (points, account))
    db.execute(
        "INSERT INTO awards (key, account, amount, points) VALUES (?, ?, ?, ?)",
        (key, account, amount, points),
    )
    return {"account": account, "points": points, "total": row["points"] + points}


def _revoke(db: sqlite3.Connection, commit_key: str, payload: Payload) -> Result:
    row = db.execute("SELECT account, points FROM awards WHERE key = ?", (commit_key,)).fetchone()
    db.execute(
        "UPDATE members SET points = points - ? WHERE account = ?", (row["points"], row["account"])
    )
    db.execute("UPDATE awards SET revoked = 1 WHERE key = ?", (commit_key,))
    return {"account": row["account"], "revoked": row["points"]}


def _loyalty_state(db: sqlite3.Connection) -> Result:
    return {
        "members": {r["account"]: r["points"] for r in db.execute("SELECT * FROM members")},
        "awards": [
            {
                "key": r["key"],
                "account": r["account"],
                "amount": r["amount"],
                "points": r["points"],
                "revoked": bool(r["revoked"]),
            }
            for r in db.execute("SELECT * FROM awards ORDER BY key")
        ],
    }


LOYALTY = ServiceDef(
    name="loyalty",
    schema=_LOYALTY_SCHEMA,
    seed=_seed_loyalty,
    commits=(Commit("award", _award, "revoke", _revoke),),
    state=_loyalty_state,
)

SERVICES = (WAREHOUSE, PAYMENT, LOYALTY)

if __name__ == "__main__":
    service_kit.main(SERVICES)
