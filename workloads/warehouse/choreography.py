"""The warehouse saga as a choreography: warehouse -> payment -> loyalty -> warehouse.

    warehouse: reserve stock  --order+reservation-->  payment: charge
    payment                   --order+charge------->  loyalty: award points
    loyalty                   --go ahead----------->  warehouse: ship

Each step is a `Transaction` built from `workloads.warehouse.spec`, so the service calls,
payloads and idempotency keys are exactly those of the Temporal twin. A business abort at any
step (out of stock, insufficient balance) compensates every role's steps in reverse order.
"""

from __future__ import annotations

from typing import Any

from accompanist_py import Located, Op, Transaction, choreography
from workloads.saga import COMMITTED, Step
from workloads.warehouse.spec import STEPS

RESERVE, CHARGE, AWARD, SHIP = STEPS


def _txn(step: Step, payload: Located) -> Transaction:
    assert step.undo is not None
    return Transaction(step.name, step.operation, step.undo, payload)


@choreography(roles=("warehouse", "payment", "loyalty"), initiator="warehouse")
async def warehouse_saga(op: Op, request: Located) -> Any:
    """Reserve, charge, award, ship; the result is {"outcome", "reason"} at the warehouse."""
    payload = await op.locally("warehouse", RESERVE.payload, request, pure=True)
    reserved = await op.transact("warehouse", _txn(RESERVE, payload))

    order = await op.locally(
        "warehouse", lambda r, res: {"request": r, "reserve": res}, request, reserved, pure=True
    )
    at_payment = await op.comm("warehouse", "payment", order)
    payload = await op.locally(
        "payment", lambda o: CHARGE.build(o["request"], o), at_payment, pure=True
    )
    charged = await op.transact("payment", _txn(CHARGE, payload))

    order = await op.locally(
        "payment",
        lambda o, c: {"request": o["request"], "charge": c},
        at_payment,
        charged,
        pure=True,
    )
    at_loyalty = await op.comm("payment", "loyalty", order)
    payload = await op.locally(
        "loyalty", lambda o: AWARD.build(o["request"], o), at_loyalty, pure=True
    )
    awarded = await op.transact("loyalty", _txn(AWARD, payload))

    await op.comm("loyalty", "warehouse", awarded)
    payload = await op.locally(
        "warehouse", lambda r, res: SHIP.build(r, {"reserve": res}), request, reserved, pure=True
    )
    await op.transact("warehouse", _txn(SHIP, payload))
    return await op.locally("warehouse", lambda: {"outcome": COMMITTED, "reason": None}, pure=True)
