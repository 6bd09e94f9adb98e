"""The hotel saga, as the harness, the runtime and the Temporal baseline see it."""

from workloads import Workload
from workloads.hotel import checker, data, spec

WORKLOAD = Workload(
    name="hotel",
    services=("frontend", "search", "reservation", "flight", "payment"),
    initiator="frontend",
    services_module="workloads.hotel.services",
    choreography="workloads.hotel.choreography:hotel_saga",
    temporal_workflow="baselines.temporal.hotel:HotelSaga",
    requests=data.requests,
    check=checker.check,
    steps=spec.STEPS,
    checker_module="workloads.hotel.checker",
)
