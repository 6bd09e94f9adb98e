"""Consistency of a chain run, judged from the services' final state.

    python -m workloads.chain.checker --service stage1=URL ... --service stageN=URL \
        [--sagas sagas.csv|json] [--out report.json]

The chain's length is the number of services given (stage1 to stageN). Invariants: every saga
is all (a stamp at every stage, all of the same parcel and weight, each after the previous
stage's stamp) or nothing; what each stage carries is the weight of its active stamps; no
blocked parcel keeps a stamp; nothing happened for a saga the client never sent; the client's
outcomes agree with the effects. Exits 1 on any violation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from workloads import consistency
from workloads.chain.spec import stages, steps
from workloads.consistency import Effect, Report, Violation, conservation, reconcile


def _committed_disagreements(
    chain: Sequence[str], saga_id: str, found: Mapping[str, Effect]
) -> list[str]:
    first = found[chain[0]].data
    details = []
    for k, name in enumerate(chain):
        stamp = found[name].data
        if (stamp["parcel"], stamp["weight"]) != (first["parcel"], first["weight"]):
            details.append(
                f"{name} stamped {stamp['parcel']} ({stamp['weight']}), "
                f"{chain[0]} {first['parcel']} ({first['weight']})"
            )
        after = found[chain[k - 1]].key if k else None
        if stamp["after"] != after:
            details.append(f"{name} stamped after {stamp['after']!r}, not {after!r}")
    return details


def check(
    state_by_service: Mapping[str, Any],
    seed: int | None = None,
    size: int | None = None,
    sent: Mapping[str, str | None] | None = None,
) -> Report:
    """Check the `GET /state` documents of stage1 .. stageN (N = how many are given).

    `seed` and `size` are accepted for the common checker interface; the chain's seed data (the
    blocked parcels) is read from the services themselves. `sent` maps every saga id the client
    sent to the outcome it saw (None when unknown), or is None to skip those checks.
    """
    chain = stages(len(state_by_service))
    if set(state_by_service) != set(chain):
        raise ValueError(f"expected the states of {list(chain)}, got {sorted(state_by_service)}")
    effects = [
        Effect(name, name, s["key"], not s["cancelled"], s)
        for name in chain
        for s in state_by_service[name]["stamps"]
    ]
    report = reconcile(
        f"chain{len(chain)}",
        steps(len(chain)),
        effects,
        state_by_service,
        sent,
        partial(_committed_disagreements, chain),
    )
    active = [e for e in effects if e.active]
    report.violations += conservation(
        "carried = weight of active stamps",
        {name: sum(e.data["weight"] for e in active if e.service == name) for name in chain},
        {name: state_by_service[name]["carried"] for name in chain},
        "weight",
    )
    for e in active:
        if e.data["parcel"] in state_by_service[e.service]["blocked"]:
            report.violations.append(
                Violation("no blocked parcel stamped", e.saga_id, f"{e.service} stamped it")
            )
    return report


if __name__ == "__main__":
    raise SystemExit(consistency.main(check))
