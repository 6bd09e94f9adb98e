"""Saga mechanics shared by the Temporal workflows: steps, compensations, outcome.

A workflow hands its workload's steps (the `Step` list of workloads/<name>/spec.py) to
`Saga.run`, which gives them the meaning of `workloads.saga.run_direct`: payloads built from the
request and earlier results, keys `"{saga_id}:{step}"` and `"{saga_id}:{step}:undo"`, and each
commit's compensation registered before the commit is sent, so that an abort is followed by
compensating everything attempted in reverse order (the services' tombstones make undoing a
never-applied commit harmless). `Dispatch` says how a step reaches its service: a regular
activity on the service's own task queue (distributed configuration) or a local activity in the
workflow's worker (tuned configuration).

This module runs inside the workflow sandbox: it must stay deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from baselines.temporal.activities import (
        ACTIVITY_NAME,
        BAD_REQUEST,
        BUSINESS_ABORT,
        CALL_POLICY,
        ServiceCall,
    )
    from workloads.saga import (
        COMMITTED,
        COMPENSATED,
        REJECTED,
        Step,
        idempotency_key,
        undo_key,
        undo_payload,
    )


@dataclass
class Dispatch:
    """How the workflow reaches services; chosen by the configuration, recorded in history."""

    local_activities: bool = False
    # service -> task queue of the worker co-located with it; absent = the workflow's own queue.
    task_queues: dict[str, str] = field(default_factory=dict)


@dataclass
class SagaInput:
    """The workflow argument: the gateway's saga id and request, plus the dispatch choice."""

    saga_id: str
    request: dict[str, Any]
    dispatch: Dispatch = field(default_factory=Dispatch)


class _Refused(Exception):
    """A service refused a step (409 or another non-retryable 4xx)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Saga:
    """One run of a saga inside a workflow."""

    def __init__(self, saga: SagaInput) -> None:
        self.saga_id = saga.saga_id
        self.request = saga.request
        self.dispatch = saga.dispatch

    async def run(self, steps: Sequence[Step]) -> dict[str, Any]:
        """Run `steps` in order; the outcome record `{"saga_id", "outcome", "reason"}`.

        A refused read-only step ends the saga as rejected (nothing was committed yet). A
        refused commit compensates every commit attempted, itself included, in reverse order.
        """
        results: dict[str, Any] = {}
        attempted: list[Step] = []
        for step in steps:
            if step.undo is not None:
                # Registered before the call: its fate is unknown until the answer arrives.
                attempted.append(step)
            call = ServiceCall(
                step.role,
                step.operation,
                idempotency_key(self.saga_id, step.name),
                step.build(self.request, results),
            )
            try:
                results[step.name] = await self._call(call)
            except _Refused as refused:
                if step.undo is None:
                    return self._outcome(REJECTED, refused.reason)
                await self._compensate(attempted)
                return self._outcome(COMPENSATED, refused.reason)
        return self._outcome(COMMITTED, None)

    async def _compensate(self, attempted: list[Step]) -> None:
        for step in reversed(attempted):
            assert step.undo is not None
            undo = ServiceCall(
                step.role,
                step.undo,
                undo_key(self.saga_id, step.name),
                undo_payload(self.saga_id, step.name),
            )
            try:
                await self._call(undo)
            except _Refused as refused:
                # A refused compensation is a bug in a service: fail the workflow visibly
                # (a plain exception would only retry the workflow task forever).
                raise ApplicationError(
                    f"compensation {undo.idempotency_key} refused: {refused.reason}",
                    non_retryable=True,
                ) from refused

    def _outcome(self, outcome: str, reason: str | None) -> dict[str, Any]:
        return {"saga_id": self.saga_id, "outcome": outcome, "reason": reason}

    async def _call(self, call: ServiceCall) -> dict:
        try:
            if self.dispatch.local_activities:
                return await workflow.execute_local_activity(
                    ACTIVITY_NAME, call, result_type=dict, **CALL_POLICY.local_activity_options()
                )
            return await workflow.execute_activity(
                ACTIVITY_NAME,
                call,
                result_type=dict,
                task_queue=self.dispatch.task_queues.get(call.service),
                **CALL_POLICY.activity_options(),
            )
        except (ActivityError, ApplicationError) as error:
            # A regular activity's failure arrives wrapped in ActivityError, a local one's as
            # the ApplicationError itself.
            cause = error.cause if isinstance(error, ActivityError) else error
            if isinstance(cause, ApplicationError) and cause.type in (BUSINESS_ABORT, BAD_REQUEST):
                raise _Refused(cause.message) from error
            raise
