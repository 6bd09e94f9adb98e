"""A node may host several roles: messages between them never leave the process."""

from __future__ import annotations

from accompanist_py import Located, Op, choreography
from accompanist_py.choreography import Registry
from accompanist_py.message import Message
from accompanist_py.node import Node, wait_idle
from accompanist_py.transport.memory import MemoryNetwork


class RecordingNetwork(MemoryNetwork):
    """Remembers (sender, receiver) of every message that crossed the network."""

    def __init__(self) -> None:
        super().__init__()
        self.crossed: list[tuple[str, str]] = []

    async def _send(self, receiver: str, batch: list[Message]):  # type: ignore[override]
        self.crossed += [(m.sender, m.receiver) for m in batch]
        return await super()._send(receiver, batch)


@choreography(roles=("a", "b", "c"))
async def relay(op: Op, x: Located) -> Located:
    y = await op.comm("a", "b", x)
    z = await op.comm("b", "c", y)
    return await op.comm("c", "a", z)


async def test_roles_hosted_together_exchange_messages_and_finish_with_the_others() -> None:
    network = RecordingNetwork()
    registry = Registry([relay])
    together = Node("ab", ["a", "b"], registry, network.transport())
    alone = Node("c", ["c"], registry, network.transport())
    await together.start()
    await alone.start()
    try:
        status = await together.start_session("relay", [7], session_id="s1")
        await wait_idle([together, alone])
        assert status.result == 7
        assert together.status("s1", "b").state == "completed"
        assert alone.status("s1", "c").state == "completed"
        assert ("b", "c") in network.crossed and ("c", "a") in network.crossed
        assert ("a", "b") not in network.crossed
    finally:
        await together.close()
        await alone.close()
