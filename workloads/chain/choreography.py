"""The chain saga as a choreography: stage1 -> stage2 -> ... -> stageN -> stage1.

    stage1: stamp  --request+stamps-->  stage2: stamp  --...-->  stageN: stamp
    stageN  --done-->  stage1 (which answers the client)

Each stage receives the request and the stamps so far from the stage before it, stamps, and
passes them on: one message per hop, no coordinator. It is `linear_saga` over the steps of
`spec.py`, so the service calls, payloads and idempotency keys are exactly those of the
Temporal twin; a blocked parcel compensates every stage's stamp in reverse order. One
choreography per chain length the benchmark deploys.
"""

from __future__ import annotations

from workloads.chain.spec import stages, steps
from workloads.choreography import linear_saga

chain1_saga = linear_saga("chain1_saga", steps(1), stages(1), initiator="stage1")
chain3_saga = linear_saga("chain3_saga", steps(3), stages(3), initiator="stage1")
chain5_saga = linear_saga("chain5_saga", steps(5), stages(5), initiator="stage1")
