"""The payment service both workloads share: accounts with balances, charges and refunds.

`charge` takes `{"account", "amount"}` (amount in cents) and aborts with the workload's decline
reason when the balance is short; `refund` gives a charge back. The checker half
(`charge_effects`, `ledger_violations`) turns the service's state into saga effects and checks
that money is conserved: every balance is its initial value minus its active charges.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from workloads.consistency import Effect, Violation, conservation
from workloads.service_kit import Abort, Commit, Payload, Result, ServiceDef, field, positive_int

# (seed, size, abort_rate) -> initial balance of every account, in cents.
Balances = Callable[[int, int, float], Mapping[str, int]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    key TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    refunded INTEGER NOT NULL DEFAULT 0
);
"""


def ledger_service(balances: Balances, decline_reason: str, name: str = "payment") -> ServiceDef:
    """A payment service whose accounts start at `balances(seed, size, abort_rate)`."""

    def seed(db: sqlite3.Connection, seed: int, size: int, abort_rate: float) -> None:
        db.executemany(
            "INSERT INTO accounts (account, balance) VALUES (?, ?)",
            sorted(balances(seed, size, abort_rate).items()),
        )

    def charge(db: sqlite3.Connection, key: str, payload: Payload) -> Result:
        account = field(payload, "account", str)
        amount = positive_int(payload, "amount")
        row = db.execute("SELECT balance FROM accounts WHERE account = ?", (account,)).fetchone()
        if row is None:
            raise Abort("unknown account")
        if row["balance"] < amount:
            raise Abort(decline_reason)
        db.execute("UPDATE accounts SET balance = balance - ? WHERE account = ?", (amount, account))
        db.execute(
            "INSERT INTO charges (key, account, amount) VALUES (?, ?, ?)", (key, account, amount)
        )
        return {"account": account, "amount": amount, "balance": row["balance"] - amount}

    def refund(db: sqlite3.Connection, commit_key: str, payload: Payload) -> Result:
        row = db.execute(
            "SELECT account, amount FROM charges WHERE key = ?", (commit_key,)
        ).fetchone()
        db.execute("UPDATE charges SET refunded = 1 WHERE key = ?", (commit_key,))
        db.execute(
            "UPDATE accounts SET balance = balance + ? WHERE account = ?",
            (row["amount"], row["account"]),
        )
        return {"account": row["account"], "refunded": row["amount"]}

    def state(db: sqlite3.Connection) -> Result:
        return {
            "accounts": {r["account"]: r["balance"] for r in db.execute("SELECT * FROM accounts")},
            "charges": [
                {
                    "key": r["key"],
                    "account": r["account"],
                    "amount": r["amount"],
                    "refunded": bool(r["refunded"]),
                }
                for r in db.execute("SELECT * FROM charges ORDER BY key")
            ],
        }

    return ServiceDef(
        name=name,
        schema=_SCHEMA,
        seed=seed,
        commits=(Commit("charge", charge, "refund", refund),),
        state=state,
    )


def charge_effects(
    state: Mapping[str, Any], service: str = "payment", step: str = "charge"
) -> list[Effect]:
    """One effect per charge the ledger holds."""
    return [Effect(service, step, c["key"], not c["refunded"], c) for c in state["charges"]]


def ledger_violations(state: Mapping[str, Any], initial: Mapping[str, int]) -> list[Violation]:
    """Money is conserved: balance = initial - active charges, and never negative."""
    expected = dict(initial)
    for charge in state["charges"]:
        if not charge["refunded"]:
            expected[charge["account"]] = expected.get(charge["account"], 0) - charge["amount"]
    violations = conservation("money conserved", expected, state["accounts"], "balance")
    violations += [
        Violation("balance never negative", account, f"balance is {balance}")
        for account, balance in state["accounts"].items()
        if balance < 0
    ]
    return violations
