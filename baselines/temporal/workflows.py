"""The Temporal twin of each workload, found through the workload descriptors.

Each `workloads/<name>/workload.py` names its workflow class (`temporal_workflow`,
"module:Class"), its services and its initiator; this module imports the classes once so that
workers, the gateway and the tuning tool share one table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from workloads import discover


@dataclass(frozen=True)
class TemporalWorkload:
    """A workload as the Temporal baseline sees it."""

    name: str
    workflow: type
    services: tuple[str, ...]
    initiator: str  # its worker also runs the workflows in the distributed configuration


def _twins() -> dict[str, TemporalWorkload]:
    twins = {}
    for workload in discover().values():
        module, _, name = workload.temporal_workflow.partition(":")
        workflow = getattr(importlib.import_module(module), name)
        twins[workload.name] = TemporalWorkload(
            workload.name, workflow, workload.services, workload.initiator
        )
    return twins


WORKFLOWS: dict[str, TemporalWorkload] = _twins()
