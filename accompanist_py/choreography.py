"""Declaring a choreography: one async function over named roles.

`@choreography(roles=[...])` turns `async def saga(op, order): ...` into a `Choreography`
that every sidecar hosting one of the roles runs with its own projector `op`. The function's
parameters after `op` are the session's inputs; they are located at the initiator, the role
whose sidecar starts the session and answers the client.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from accompanist_py.errors import ChoreographyError

ChoreographyFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Choreography:
    """A named choreography over `roles`, started at `initiator`."""

    name: str
    roles: tuple[str, ...]
    initiator: str
    fn: ChoreographyFn
    params: tuple[str, ...] = field(default=())

    def bind(self, args: Iterable[Any], kwargs: dict[str, Any]) -> list[Any]:
        """Map call arguments onto the declared parameters, in order, with a clear error."""
        try:
            bound = inspect.signature(self.fn).bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ChoreographyError(f"choreography {self.name!r}: {exc}") from exc
        bound.apply_defaults()
        return [bound.arguments[p] for p in self.params]


def choreography(
    roles: Iterable[str], *, name: str | None = None, initiator: str | None = None
) -> Callable[[ChoreographyFn], Choreography]:
    """Declare an async function `fn(op, *inputs)` as a choreography over `roles`.

    `initiator` (default: the first role) is where sessions start and where inputs live.
    """
    declared = tuple(roles)
    if not declared or len(set(declared)) != len(declared):
        raise ChoreographyError(f"roles must be a non-empty list of distinct names: {declared}")

    def wrap(fn: ChoreographyFn) -> Choreography:
        if not inspect.iscoroutinefunction(fn):
            raise ChoreographyError(f"choreography {fn.__name__!r} must be an async function")
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params:
            raise ChoreographyError(f"choreography {fn.__name__!r} must take `op` first")
        for p in params[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ChoreographyError(
                    f"choreography {fn.__name__!r}: *args/**kwargs are not supported, "
                    "declare each input so that every role can bind it"
                )
        start = initiator or declared[0]
        if start not in declared:
            raise ChoreographyError(f"initiator {start!r} is not one of the roles {declared}")
        return Choreography(
            name=name or fn.__name__,
            roles=declared,
            initiator=start,
            fn=fn,
            params=tuple(p.name for p in params[1:]),
        )

    return wrap


class Registry:
    """The choreographies a node can run, by name."""

    def __init__(self, choreographies: Iterable[Choreography] = ()) -> None:
        self._by_name: dict[str, Choreography] = {}
        for c in choreographies:
            self.add(c)

    def add(self, chor: Choreography) -> None:
        existing = self._by_name.get(chor.name)
        if existing is not None and existing is not chor:
            raise ChoreographyError(f"two choreographies are named {chor.name!r}")
        self._by_name[chor.name] = chor

    def load_module(self, module: str) -> None:
        """Import `module` and register every `Choreography` defined at its top level."""
        mod = importlib.import_module(module)
        found = [v for v in vars(mod).values() if isinstance(v, Choreography)]
        if not found:
            raise ChoreographyError(f"module {module!r} defines no choreography")
        for c in found:
            self.add(c)

    def get(self, name: str) -> Choreography:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise ChoreographyError(f"unknown choreography {name!r} (known: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return sorted(self._by_name)
