"""The warehouse saga, step by step: which role does what, and with which payload.

    reserve (warehouse)  {"customer", "item", "quantity"}
        -> {"reservation_id", "item", "quantity", "unit_price", "amount"}
        409 "out of stock"
    charge  (payment)    {"account": customer, "amount": reserved.amount}
        -> {"account", "amount", "balance"}
        409 "insufficient balance"
    award   (loyalty)    {"account": customer, "amount": charged.amount}
        -> {"account", "points", "total"}
    ship    (warehouse)  {"reservation_id": reserved.reservation_id}
        -> {"shipment_id", "reservation_id", "item", "quantity"}

Compensations, run in reverse order: release, refund, revoke, cancel_shipment, each with the
body {"commit_key": "{saga_id}:{step}"} (see workloads.saga.undo_payload).
"""

from __future__ import annotations

from typing import Any

from workloads.saga import Step

Json = dict[str, Any]


def reserve_payload(request: Json) -> Json:
    return {
        "customer": request["customer"],
        "item": request["item"],
        "quantity": request["quantity"],
    }


def charge_payload(request: Json, reserved: Json) -> Json:
    return {"account": request["customer"], "amount": reserved["amount"]}


def award_payload(request: Json, charged: Json) -> Json:
    return {"account": request["customer"], "amount": charged["amount"]}


def ship_payload(request: Json, reserved: Json) -> Json:
    return {"reservation_id": reserved["reservation_id"]}


STEPS = (
    Step("reserve", "warehouse", "reserve", "release", (), reserve_payload),
    Step("charge", "payment", "charge", "refund", ("reserve",), charge_payload),
    Step("award", "loyalty", "award", "revoke", ("charge",), award_payload),
    Step("ship", "warehouse", "ship", "cancel_shipment", ("reserve",), ship_payload),
)
