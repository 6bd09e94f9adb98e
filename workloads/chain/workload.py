"""The chain sagas of 1, 3 and 5 stages, as the harness, the runtime and Temporal see them."""

from functools import partial

from workloads import Workload
from workloads.chain import checker, data, spec

WORKLOADS = tuple(
    Workload(
        name=f"chain{n}",
        services=spec.stages(n),
        initiator=spec.stage(1),
        services_module="workloads.chain.services",
        choreography=f"workloads.chain.choreography:chain{n}_saga",
        temporal_workflow=f"baselines.temporal.chain:Chain{n}Saga",
        requests=partial(data.requests, n),
        check=checker.check,
        steps=spec.steps(n),
        checker_module="workloads.chain.checker",
    )
    for n in spec.LENGTHS
)
