"""Start a saga's workflow, or attach to it: the client side shared by the gateway and tools.

The workflow id is the saga id. A start that finds the workflow running attaches to it
(conflict policy USE_EXISTING); one that finds it closed is refused (reuse policy
REJECT_DUPLICATE) and reads the closed run's result instead. So however often a saga id is
posted, the saga runs once and every caller gets its outcome.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from baselines.temporal.saga import SagaInput
from baselines.temporal.worker import WORKFLOW_TASKS, Tuning, dispatch, task_queue
from baselines.temporal.workflows import TemporalWorkload


async def run_saga(
    client: Client,
    tuning: Tuning,
    twin: TemporalWorkload,
    saga_id: str,
    request: dict[str, Any],
) -> dict[str, Any]:
    """The outcome record of saga `saga_id`, starting its workflow unless it exists."""
    try:
        handle = await client.start_workflow(
            twin.workflow.run,
            SagaInput(saga_id, request, dispatch(tuning, twin)),
            id=saga_id,
            task_queue=task_queue(tuning, twin.name),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            request_eager_start=tuning.eager_start,
            task_timeout=WORKFLOW_TASKS.timeout,
        )
    except WorkflowAlreadyStartedError:
        handle = client.get_workflow_handle(saga_id)
    return await handle.result()
