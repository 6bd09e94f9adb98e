"""What a test of any system checks after it ran a batch of a workload's sagas.

Every system's tests (the Temporal, DBOS and Restate twins) draw requests with a high abort
rate, so that every abort path and the hotel's early endings occur, run them, and then ask the
same questions: did each saga end as the workload's spec prescribes for its request, did every
kind of ending occur, and does the workload's checker find the services consistent with the
outcomes the client saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from workloads import discover
from workloads.hotel.data import expected_outcome as hotel_expected
from workloads.warehouse.data import expected_outcome as warehouse_expected

# request -> (outcome, reason) the spec prescribes.
EXPECTED: dict[str, Callable[[dict[str, Any]], tuple[str, str | None]]] = {
    "warehouse": warehouse_expected,
    "hotel": hotel_expected,
}
# Sagas per batch at abort rate 0.5 (`BATCH_ABORT_RATE`): every trap at least twice.
BATCH = {"warehouse": 12, "hotel": 20}
BATCH_ABORT_RATE = 0.5


def batch_requests(workload: str, seed: int) -> list[dict[str, Any]]:
    """A batch of the workload's requests that takes every path (`BATCH`)."""
    return discover()[workload].requests(seed, BATCH[workload], BATCH_ABORT_RATE)


def assert_batch_as_specified(
    workload: str,
    requests: Sequence[dict[str, Any]],
    outcomes: Sequence[Mapping[str, Any]],
    states: Mapping[str, Any],
) -> None:
    """Fail (AssertionError) unless every outcome is the prescribed one, every ending the
    workload has occurred, and the checker agrees with the services' `states`."""
    for request, outcome in zip(requests, outcomes, strict=True):
        assert outcome["saga_id"] == request["saga_id"], (outcome, request)
        assert (outcome["outcome"], outcome["reason"]) == EXPECTED[workload](request), request
    endings = {"committed", "compensated", "rejected"} if workload == "hotel" else None
    assert {o["outcome"] for o in outcomes} == (endings or {"committed", "compensated"})
    report = discover()[workload].check(states, sent={o["saga_id"]: o["outcome"] for o in outcomes})
    assert report.ok, report.summary()
    assert report.committed + report.compensated + report.rejected == len(requests)
