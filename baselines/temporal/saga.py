"""Saga mechanics shared by the Temporal workflows: steps, compensations, outcome.

A workflow hands its workload's steps (the `Step` list of workloads/<name>/spec.py) to
`Saga.run`, which runs them as `workloads.saga.run_saga` does for every system: payloads built
from the request and earlier results, keys `"{saga_id}:{step}"` and `"{saga_id}:{step}:undo"`,
and each commit's compensation registered before the commit is sent, so that an abort is
followed by compensating everything attempted in reverse order (the services' tombstones make
undoing a never-applied commit harmless). `Dispatch` says how a step reaches its service: a regular
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
    from workloads.saga import CompensationRefused, Refused, Step, run_saga


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


class Saga:
    """One run of a saga inside a workflow: `workloads.saga.run_saga` with activities as its
    step calls."""

    def __init__(self, saga: SagaInput) -> None:
        self.saga_id = saga.saga_id
        self.request = saga.request
        self.dispatch = saga.dispatch

    async def run(self, steps: Sequence[Step]) -> dict[str, Any]:
        """Run `steps` in order; the outcome record `{"saga_id", "outcome", "reason"}`."""
        try:
            done = await run_saga(self.saga_id, steps, self.request, self._step)
        except CompensationRefused as error:
            # A refused compensation is a bug in a service: fail the workflow visibly (a plain
            # exception would only retry the workflow task forever).
            raise ApplicationError(str(error), non_retryable=True) from error
        return {k: done[k] for k in ("saga_id", "outcome", "reason")}

    async def _step(self, role: str, operation: str, key: str, body: dict[str, Any]) -> dict:
        return await self._call(ServiceCall(role, operation, key, body))

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
                raise Refused(cause.message) from error
            raise
