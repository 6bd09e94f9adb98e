"""The chain sagas as Temporal workflows, twins of workloads/chain's choreographies.

stage1 stamps the parcel -> stage2 stamps it after stage1's stamp -> ... -> stageN. A parcel
blocked at a stage aborts the saga, and every stamp attempted so far is compensated in reverse
order. One workflow type per chain length the benchmark deploys; the steps and their payloads
are those of workloads/chain/spec.py, so both systems send the same requests under the same
idempotency keys.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from baselines.temporal.saga import Saga, SagaInput
    from workloads.chain.spec import steps


@workflow.defn
class Chain1Saga:
    """One stamp at stage1."""

    @workflow.run
    async def run(self, saga: SagaInput) -> dict[str, Any]:
        return await Saga(saga).run(steps(1))


@workflow.defn
class Chain3Saga:
    """Stamps at stage1, stage2, stage3, compensated in reverse on abort."""

    @workflow.run
    async def run(self, saga: SagaInput) -> dict[str, Any]:
        return await Saga(saga).run(steps(3))


@workflow.defn
class Chain5Saga:
    """Stamps at stage1 .. stage5, compensated in reverse on abort."""

    @workflow.run
    async def run(self, saga: SagaInput) -> dict[str, Any]:
        return await Saga(saga).run(steps(5))
