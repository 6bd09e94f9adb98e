"""Helpers for testing choreographies: every role in one process, no network, no files.

`run_local(saga, order)` runs one session with each role on its own node over an in-memory
network and returns what each role's part returned. Services are Python callables; faults
(duplicates, reordering, lost acknowledgements) can be injected to test robustness.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from accompanist_py.choreography import Choreography, Registry
from accompanist_py.located import Located
from accompanist_py.message import decode_value
from accompanist_py.node import Node, NodeConfig, wait_idle
from accompanist_py.service import Handler, LocalServiceClient
from accompanist_py.store import SessionState
from accompanist_py.transport.memory import MemoryNetwork, NetworkFaults


class LocalCluster:
    """One node per role of a choreography, wired by a `MemoryNetwork`."""

    def __init__(
        self,
        choreographies: list[Choreography],
        *,
        services: Mapping[str, Handler] | None = None,
        faults: NetworkFaults | None = None,
        config: NodeConfig | None = None,
    ) -> None:
        self.network = MemoryNetwork(faults)
        registry = Registry(choreographies)
        roles = sorted({r for c in choreographies for r in c.roles})
        services = services or {}
        self.nodes = {
            r: Node(
                r,
                [r],
                registry,
                self.network.transport(),
                service=LocalServiceClient(services[r]) if r in services else None,
                config=config or NodeConfig(receive_timeout_s=10.0),
            )
            for r in roles
        }

    async def __aenter__(self) -> LocalCluster:
        for node in self.nodes.values():
            await node.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in self.nodes.values():
            await node.close()

    async def run(
        self, chor: Choreography, *args: Any, session_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run one session to its end at every role; returns {role: its part's result}."""
        sid = session_id or uuid.uuid4().hex
        status = await self.nodes[chor.initiator].start_session(
            chor.name, list(args), kwargs, session_id=sid
        )
        await wait_idle(list(self.nodes.values()))
        results: dict[str, Any] = {chor.initiator: status.result}
        for role in chor.roles:
            rec = self.nodes[role].store.session(sid, role)
            if rec is not None and role != chor.initiator:
                results[role] = decode_value(rec.result) if rec.result is not None else None
            elif rec is None:
                results[role] = None
        return results

    def states(self, session_id: str) -> dict[str, str | None]:
        """The state of a session at every role (None where it never started)."""
        out: dict[str, str | None] = {}
        for role, node in self.nodes.items():
            rec = node.store.session(session_id, role)
            out[role] = rec.state if rec else None
        return out


async def _run_local(
    chor: Choreography,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    services: Mapping[str, Handler] | None,
    faults: NetworkFaults | None,
) -> dict[str, Any]:
    async with LocalCluster([chor], services=services, faults=faults) as cluster:
        return await cluster.run(chor, *args, **kwargs)


def run_local(
    chor: Choreography,
    *args: Any,
    services: Mapping[str, Handler] | None = None,
    faults: NetworkFaults | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run one session of `chor` with every role in this process; returns {role: result}.

    Inputs are located at the initiator, as in a real deployment. `services` maps a role to
    a callable `handler(operation, payload, idempotency_key)` standing in for its service.
    A role that never took part in the session maps to None. Call from synchronous code; in
    async code use `LocalCluster`.
    """
    return asyncio.run(_run_local(chor, args, kwargs, services, faults))


__all__ = ["LocalCluster", "Located", "NetworkFaults", "SessionState", "run_local"]
