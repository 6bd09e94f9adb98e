"""The chain saga step by step: N stages, each stamping the parcel after the one before.

    stamp (stage1)  {"parcel", "weight", "after": None}
        -> {"stamp_id", "stage", "parcel", "weight", "after"}        409 "blocked"
    stamp (stageK)  {"parcel", "weight", "after": stamp_id of stage K-1}
        -> the same shape

Each step is a call at the next service, so a chain of N stages is N sequential service calls
in N places: the shape the benchmark sweeps against injected latency. Compensation (`unstamp`,
in reverse order) takes the body {"commit_key": "{saga_id}:{stage}"}. The same `Step`s drive the
choreography and the Temporal twin, so both send identical requests under identical keys.
"""

from __future__ import annotations

from typing import Any

from workloads.saga import Step

Json = dict[str, Any]

# The chain lengths the benchmark deploys (workloads chain1, chain3, chain5).
LENGTHS = (1, 3, 5)


def stage(k: int) -> str:
    """The name of the k-th stage (1-based): its service, its role and its step."""
    return f"stage{k}"


def stages(n: int) -> tuple[str, ...]:
    """The stages of a chain of length `n`, in order."""
    if not 1 <= n <= max(LENGTHS):
        raise ValueError(f"a chain has 1 to {max(LENGTHS)} stages, not {n}")
    return tuple(stage(k) for k in range(1, n + 1))


def first_stamp_payload(request: Json) -> Json:
    return {"parcel": request["parcel"], "weight": request["weight"], "after": None}


def next_stamp_payload(request: Json, previous: Json) -> Json:
    return {**first_stamp_payload(request), "after": previous["stamp_id"]}


def steps(n: int) -> tuple[Step, ...]:
    """The steps of a chain of length `n`: one stamp per stage, each after the previous one."""
    names = stages(n)
    return tuple(
        Step(name, name, "stamp", "unstamp", (), first_stamp_payload)
        if k == 0
        else Step(name, name, "stamp", "unstamp", (names[k - 1],), next_stamp_payload)
        for k, name in enumerate(names)
    )
