"""The audit counts what the server recorded: a workflow task that failed once and was retried,
and each kind of timeout under its own name."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.history.v1 import HistoryEvent, WorkflowTaskTimedOutEventAttributes
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from baselines.temporal.audit import audit, count_events
from baselines.temporal.devserver import DevServer

QUEUE = "audit"


@workflow.defn(sandboxed=False)
class FailsItsFirstTask:
    """Fails its first workflow task (not the workflow), as a worker bug would; the retry works."""

    failed = False

    @workflow.run
    async def run(self) -> str:
        if not FailsItsFirstTask.failed:
            FailsItsFirstTask.failed = True
            raise RuntimeError("the first workflow task fails")
        return "done"


async def test_the_audit_counts_a_failed_workflow_task_that_was_retried(
    temporal_server: DevServer,
) -> None:
    client = await Client.connect(temporal_server.target, namespace=temporal_server.namespace)
    async with Worker(
        client,
        task_queue=QUEUE,
        workflows=[FailsItsFirstTask],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        result = await asyncio.wait_for(
            client.execute_workflow(FailsItsFirstTask.run, id="fails-once", task_queue=QUEUE), 60
        )
    assert result == "done"
    counts = await audit(client)
    assert counts["workflows"] == 1
    assert counts["workflow_task_failed"] == 1
    assert counts["workflow_task_completed"] >= 1


def test_each_timeout_is_counted_under_its_kind() -> None:
    def timed_out(kind: TimeoutType.ValueType) -> HistoryEvent:
        return HistoryEvent(
            event_type=EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            workflow_task_timed_out_event_attributes=WorkflowTaskTimedOutEventAttributes(
                timeout_type=kind
            ),
        )

    counts = count_events(
        [
            timed_out(TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START),
            timed_out(TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE),
            timed_out(TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE),
            HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
            HistoryEvent(event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED),
        ]
    )
    assert counts == {
        "workflow_task_timed_out:schedule_to_start": 1,
        "workflow_task_timed_out:start_to_close": 2,
        "workflow_task_completed": 1,
    }
