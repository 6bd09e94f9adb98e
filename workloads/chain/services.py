"""The chain saga's services: one per stage, all alike, each stamping parcels.

    python -m workloads.chain.services --service stage1|...|stage5 --port P --db FILE \
        [--seed 1] [--size 10000] [--abort-rate 0.1]

A stamp adds the parcel's weight to what the stage carries and records which stamp it follows;
`unstamp` takes exactly that weight off again. The HTTP contract, idempotency and tombstones
come from workloads.service_kit.
"""

from __future__ import annotations

import sqlite3

from workloads import service_kit
from workloads.chain.data import BLOCKED, blocked_at
from workloads.chain.spec import LENGTHS, stage
from workloads.service_kit import Abort, Commit, Payload, Result, ServiceDef, field, positive_int

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocked (parcel TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS carried (id INTEGER PRIMARY KEY CHECK (id = 0), weight INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stamps (
    key TEXT PRIMARY KEY,
    parcel TEXT NOT NULL,
    weight INTEGER NOT NULL,
    after TEXT,
    cancelled INTEGER NOT NULL DEFAULT 0
);
"""


def stage_service(k: int) -> ServiceDef:
    """The service of the k-th stage."""
    name = stage(k)

    def seed(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
        db.execute("INSERT INTO carried (id, weight) VALUES (0, 0)")
        if abort_rate > 0:
            db.executemany("INSERT INTO blocked VALUES (?)", [(p,) for p in blocked_at(k)])

    def stamp(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
        parcel = field(payload, "parcel", str)
        weight = positive_int(payload, "weight")
        after = payload.get("after")
        if after is not None and not isinstance(after, str):
            raise service_kit.BadRequest("field 'after' must be a str or null")
        if db.execute("SELECT 1 FROM blocked WHERE parcel = ?", (parcel,)).fetchone():
            raise Abort(BLOCKED)
        db.execute("UPDATE carried SET weight = weight + ?", (weight,))
        db.execute(
            "INSERT INTO stamps (key, parcel, weight, after) VALUES (?, ?, ?, ?)",
            (key, parcel, weight, after),
        )
        return {"stamp_id": key, "stage": name, "parcel": parcel, "weight": weight, "after": after}

    def unstamp(db: sqlite3.Connection, commit_key: str, payload: Payload) -> Result:
        row = db.execute(
            "SELECT parcel, weight FROM stamps WHERE key = ?", (commit_key,)
        ).fetchone()
        db.execute("UPDATE carried SET weight = weight - ?", (row["weight"],))
        db.execute("UPDATE stamps SET cancelled = 1 WHERE key = ?", (commit_key,))
        return {"parcel": row["parcel"], "unstamped": row["weight"]}

    def state(db: sqlite3.Connection) -> Result:
        return {
            "carried": db.execute("SELECT weight FROM carried").fetchone()["weight"],
            "blocked": [r["parcel"] for r in db.execute("SELECT parcel FROM blocked")],
            "stamps": [
                {**dict(r), "cancelled": bool(r["cancelled"])}
                for r in db.execute("SELECT * FROM stamps ORDER BY key")
            ],
        }

    return ServiceDef(
        name=name,
        schema=_SCHEMA,
        seed=seed,
        commits=(Commit("stamp", stamp, "unstamp", unstamp),),
        state=state,
    )


SERVICES = tuple(stage_service(k) for k in range(1, max(LENGTHS) + 1))

if __name__ == "__main__":
    service_kit.main(SERVICES)
