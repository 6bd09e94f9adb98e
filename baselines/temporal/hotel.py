"""The hotel saga as a Temporal workflow: the twin of workloads/hotel's choreography.

frontend checks the user -> search finds a nearby hotel with a free room (read-only) ->
reservation reserves the room -> flight books a seat -> payment charges the total. An unknown
user or no hotel with a free room ends the saga early as rejected ("no availability"); a room
gone, a full flight or a declined payment aborts it, and every step attempted so far is
compensated in reverse order. The steps and their payloads are workloads/hotel/spec.py's.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from baselines.temporal.saga import Saga, SagaInput
    from workloads.hotel import spec


@workflow.defn
class HotelSaga:
    """check_user -> nearby -> reserve_room -> book_seat -> charge, compensated in reverse."""

    @workflow.run
    async def run(self, saga: SagaInput) -> dict[str, Any]:
        return await Saga(saga).run(spec.STEPS)
