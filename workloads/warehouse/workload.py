"""The warehouse saga, as the harness, the runtime and the Temporal baseline see it."""

from workloads import Workload
from workloads.warehouse import checker, data, spec

WORKLOAD = Workload(
    name="warehouse",
    services=("warehouse", "payment", "loyalty"),
    initiator="warehouse",
    services_module="workloads.warehouse.services",
    choreography="workloads.warehouse.choreography:warehouse_saga",
    temporal_workflow="baselines.temporal.warehouse:WarehouseSaga",
    requests=data.requests,
    check=checker.check,
    steps=spec.STEPS,
    checker_module="workloads.warehouse.checker",
)
