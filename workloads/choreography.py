"""Any linear saga as a choreography, built from its steps (`workloads.saga.Step`).

`linear_saga` gives the choreography whose meaning is `workloads.saga.run_direct` (and the
Temporal twin's `Saga.run`): the steps run in order, each at its role, which receives from the
previous role the request and the results so far. A step with an undo is a `Transaction` (a
business abort compensates every role's steps in reverse); a read-only step that is refused
ends the saga "rejected", and only the initiator is told (later roles never take part). The
hand-written choreographies of the warehouse and hotel sagas do the same with less data on
the wire; a new workload can start with this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from accompanist_py import BusinessAbort, Choreography, Located, Op, Transaction, choreography
from workloads.saga import COMMITTED, REJECTED, Step


def linear_saga(
    name: str, steps: Sequence[Step], roles: Sequence[str], initiator: str
) -> Choreography:
    """The choreography running `steps` in order over `roles`, started at `initiator`."""

    async def saga(op: Op, request: Located) -> Any:
        holder = initiator
        state = await op.locally(
            initiator, lambda r: {"request": r, "results": {}}, request, pure=True
        )
        for step in steps:
            if step.role != holder:
                state = await op.comm(holder, step.role, state)
                holder = step.role
            payload = await op.locally(
                holder, lambda s, st=step: st.build(s["request"], s["results"]), state, pure=True
            )
            if step.undo is not None:
                result = await op.transact(
                    holder, Transaction(step.name, step.operation, step.undo, payload)
                )
            else:
                result = await _lookup(op, step, payload)
                refusal = await op.broadcast(
                    holder, _refusal(result), to=[initiator] if holder != initiator else []
                )
                if refusal:
                    return await op.locally(
                        initiator,
                        lambda r: {"outcome": REJECTED, "reason": r},
                        refusal,
                        pure=True,
                    )
            state = await op.locally(
                holder,
                lambda s, r, st=step: {**s, "results": {**s["results"], st.name: r}},
                state,
                result,
                pure=True,
            )
        if holder != initiator:
            await op.comm(holder, initiator, None)
        return await op.locally(
            initiator, lambda: {"outcome": COMMITTED, "reason": None}, pure=True
        )

    saga.__name__ = name
    return choreography(roles=roles, name=name, initiator=initiator)(saga)


async def _lookup(op: Op, step: Step, payload: Located) -> Located:
    """A read-only step's result, or {"rejected": reason} if the service refused it."""
    try:
        return await op.call(step.role, step.operation, payload, key=step.name)
    except BusinessAbort as refusal:
        return Located(frozenset({step.role}), step.role, {"rejected": refusal.reason})


def _refusal(result: Located) -> str | None:
    return result.value.get("rejected", "") if result.is_here else None
