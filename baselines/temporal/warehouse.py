"""The warehouse saga as a Temporal workflow: the twin of workloads/warehouse's choreography.

warehouse reserves stock -> payment takes the money -> loyalty awards points -> warehouse
packages and ships. Out of stock or insufficient balance aborts the saga, and every step
attempted so far is compensated in reverse order (cancel shipment, revoke points, refund,
release). The steps and their payloads are workloads/warehouse/spec.py's, so both systems send
the same requests under the same idempotency keys.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from baselines.temporal.saga import Saga, SagaInput
    from workloads.warehouse import spec


@workflow.defn
class WarehouseSaga:
    """reserve -> charge -> award -> ship, compensated in reverse on abort."""

    @workflow.run
    async def run(self, saga: SagaInput) -> dict[str, Any]:
        return await Saga(saga).run(spec.STEPS)
