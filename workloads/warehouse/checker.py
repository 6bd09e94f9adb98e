"""Consistency of a warehouse run, judged from the services' final state.

    python -m workloads.warehouse.checker --service warehouse=URL --service payment=URL \
        --service loyalty=URL [--sagas sagas.csv|json] [--out report.json]

Invariants: per item, stock + reserved + shipped equals the seeded stock and the counters
agree with the reservations; money and loyalty points are conserved; every saga is all
(reservation shipped, one charge of the reserved amount, one award for that charge, one
shipment) or nothing; nothing happened for a saga the client never sent; the client's
outcomes agree with the effects. Exits 1 on any violation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from workloads import consistency, ledger
from workloads.consistency import Effect, Report, Violation, conservation, reconcile, seeding
from workloads.warehouse.data import catalogue, points_for
from workloads.warehouse.spec import STEPS


def _effects(state_by_service: Mapping[str, Any]) -> list[Effect]:
    warehouse = state_by_service["warehouse"]
    return [
        *(
            Effect("warehouse", "reserve", r["key"], r["state"] != "released", r)
            for r in warehouse["reservations"]
        ),
        *(
            Effect("warehouse", "ship", s["key"], not s["cancelled"], s)
            for s in warehouse["shipments"]
        ),
        *ledger.charge_effects(state_by_service["payment"]),
        *(
            Effect("loyalty", "award", a["key"], not a["revoked"], a)
            for a in state_by_service["loyalty"]["awards"]
        ),
    ]


def _committed_disagreements(saga_id: str, found: Mapping[str, Effect]) -> list[str]:
    reserved, charged = found["reserve"].data, found["charge"].data
    awarded, shipped = found["award"].data, found["ship"].data
    checks = [
        (
            charged["amount"] == reserved["amount"],
            f"charged {charged['amount']} for a reservation of {reserved['amount']}",
        ),
        (
            charged["account"] == reserved["customer"] == awarded["account"],
            f"reserved for {reserved['customer']}, charged {charged['account']}, "
            f"awarded {awarded['account']}",
        ),
        (
            awarded["points"] == points_for(charged["amount"]),
            f"awarded {awarded['points']} points for {charged['amount']}",
        ),
        (
            shipped["reservation_key"] == found["reserve"].key and reserved["state"] == "shipped",
            f"shipment of {shipped['reservation_key']}, reservation {reserved['state']}",
        ),
    ]
    return [detail for ok, detail in checks if not ok]


def _stock_violations(
    warehouse: Mapping[str, Any], initial: Mapping[str, int], prices: Mapping[str, int]
) -> list[Violation]:
    items = warehouse["items"]
    violations = conservation(
        "stock + reserved + shipped = initial",
        initial,
        {item: c["stock"] + c["reserved"] + c["shipped"] for item, c in items.items()},
        "total",
    )
    held: dict[str, Counter[str]] = {item: Counter() for item in items}
    for r in warehouse["reservations"]:
        held.setdefault(r["item"], Counter())[r["state"]] += r["quantity"]
        if r["amount"] != prices.get(r["item"], 0) * r["quantity"]:
            violations.append(
                Violation(
                    "reservation priced from the catalogue",
                    r["key"],
                    f"amount {r['amount']} for {r['quantity']} {r['item']}",
                )
            )
    for item, counters in items.items():
        for column in ("reserved", "shipped"):
            if counters[column] != held[item][column]:
                violations.append(
                    Violation(
                        "counters agree with reservations",
                        item,
                        f"{column} is {counters[column]}, reservations say {held[item][column]}",
                    )
                )
        if counters["stock"] < 0:
            violations.append(Violation("stock never negative", item, f"{counters['stock']}"))
    return violations


def _points_violations(loyalty: Mapping[str, Any], members: Mapping[str, int]) -> list[Violation]:
    expected = dict.fromkeys(members, 0)
    for award in loyalty["awards"]:
        if not award["revoked"]:
            expected[award["account"]] = expected.get(award["account"], 0) + award["points"]
    return conservation("points conserved", expected, loyalty["members"], "points")


def check(
    state_by_service: Mapping[str, Any],
    seed: int | None = None,
    size: int | None = None,
    sent: Mapping[str, str | None] | None = None,
) -> Report:
    """Check the `GET /state` documents of warehouse, payment and loyalty.

    `seed` and `size` default to what the services report; `sent` maps every saga id the
    client sent to the outcome it saw (None when unknown), or is None to skip those checks.
    """
    seed, size, abort_rate = seeding(state_by_service, seed, size)
    data = catalogue(seed, size, abort_rate)
    report = reconcile(
        "warehouse",
        STEPS,
        _effects(state_by_service),
        state_by_service,
        sent,
        _committed_disagreements,
    )
    report.violations += _stock_violations(state_by_service["warehouse"], data.stock, data.prices)
    report.violations += ledger.ledger_violations(state_by_service["payment"], data.balances)
    report.violations += _points_violations(state_by_service["loyalty"], data.balances)
    return report


if __name__ == "__main__":
    raise SystemExit(consistency.main(check))
