"""Saga workloads: services, choreographies and consistency checkers, one folder each.

A workload is a folder `workloads/<name>/` whose `workload.py` exports `WORKLOAD`, a
`Workload` describing it to the runtime, the Temporal baseline and the harness. `discover()`
finds them all, so adding a workload means adding a folder (and its Temporal twin). A folder
that holds a family of workloads (the chain saga, one per length) exports `WORKLOADS` instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workloads.consistency import Report
    from workloads.saga import Step


@dataclass(frozen=True)
class Workload:
    """Everything the other parts need to deploy, drive and check one saga workload.

    `services` are the service names, which are also the choreography's role names; each runs
    as `python -m <services_module> --service <name> ...`. `choreography` is the
    "module:function" of the accompanist_py choreography, started at the `initiator` role;
    `temporal_workflow` is the "module:Class" of the Temporal twin. `requests(seed, n,
    abort_rate)` generates deterministic requests; `check(state_by_service, seed, size, sent)`
    judges the services' final state; `steps` lists the saga's steps in order.
    """

    name: str
    services: tuple[str, ...]
    initiator: str
    services_module: str
    choreography: str
    temporal_workflow: str
    requests: Callable[..., list[dict[str, Any]]]
    check: Callable[..., Report]
    steps: tuple[Step, ...]
    checker_module: str


def discover() -> dict[str, Workload]:
    """Every workload under workloads/, by name."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("*/workload.py")):
        module = importlib.import_module(f"{__name__}.{path.parent.name}.workload")
        family: tuple[Workload, ...] = getattr(module, "WORKLOADS", None) or (module.WORKLOAD,)
        for workload in family:
            found[workload.name] = workload
    return found
