"""Endpoint projection at run time: the `op` object a choreography is called with.

Every role runs the same choreography function; what differs is the `Op` it receives, bound to
that role. Each operation says what the role it runs at does: `comm` sends at the sender,
receives at the receiver and does nothing elsewhere; `locally` runs only at its role; and so
on (ChoRus's `ChoreoOp`, HasChor's `epp`, as a Python object). Every operation takes one step
number at every role, so step numbers, and the idempotency keys derived from them, agree across
roles; a composed choreography numbers its steps under its parent's step ("4.1", "4.2", ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from accompanist_py.choreography import Choreography
from accompanist_py.errors import AbsentValueError, SelfSendError, UndeclaredRoleError
from accompanist_py.located import Located, unwrap
from accompanist_py.message import Kind, decode_value
from accompanist_py.saga import Transaction

if TYPE_CHECKING:
    from accompanist_py.session import RoleSession


class Choice:
    """A decision made at `src`, seen from a role that was not told it directly.

    A role that takes part only after the decision learns it from the messages it receives
    (every message carries the choices its sender knows), so it may still branch on it. A role
    that knows it by no path gets a clear error instead of a wrong branch.
    """

    __slots__ = ("_here", "_id", "_session", "_src")

    def __init__(self, session: RoleSession, choice_id: str, src: str) -> None:
        self._session = session
        self._id = choice_id
        self._src = src
        self._here = session.role

    @property
    def value(self) -> Any:
        known = self._session.choices.get(self._id)
        if known is None:
            raise AbsentValueError(
                f"role {self._here!r} branched on a choice made at {self._src!r} "
                f"(step {self._id}) that it was never told: add it to broadcast(to=...)"
            )
        return decode_value(known)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __eq__(self, other: object) -> bool:
        return self.value == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Choice(from={self._src!r}, step={self._id})"


class Op:
    """The operations of a choreography, projected onto one role."""

    def __init__(
        self,
        session: RoleSession,
        choreography: Choreography,
        to_top: Mapping[str, str],
        prefix: str = "",
    ) -> None:
        self._session = session
        self._chor = choreography
        self._to_top = dict(to_top)
        self._prefix = prefix
        self._steps = 0
        self._here = session.role

    # -- identity ----------------------------------------------------------------------------
    @property
    def role(self) -> str:
        """The role this projection runs as, in this choreography's own role names."""
        for local, top in self._to_top.items():
            if top == self._here:
                return local
        raise AssertionError("projection outside its choreography")  # enclave guarantees this

    @property
    def session_id(self) -> str:
        """The id of the running session."""
        return self._session.session_id

    def _top(self, role: str) -> str:
        try:
            return self._to_top[role]
        except (KeyError, TypeError):
            raise UndeclaredRoleError(
                f"role {role!r} is not declared by choreography {self._chor.name!r} "
                f"(roles: {', '.join(self._chor.roles)})"
            ) from None

    def _step(self) -> str:
        self._steps += 1
        return f"{self._prefix}{self._steps}"

    # -- operations --------------------------------------------------------------------------
    async def locally(
        self, role: str, fn: Callable[..., Any], *args: Any, pure: bool = False, **kwargs: Any
    ) -> Located:
        """Run `fn(*args, **kwargs)` at `role` only, with located arguments unwrapped.

        The result is journaled, so replay after a crash returns it without running `fn`
        again: read clocks, random numbers and external state here. `pure=True` skips the
        journal for computations that are deterministic anyway.
        """
        at = self._top(role)
        step = self._step()
        if at != self._here:
            return Located(frozenset({at}), self._here)
        values = [unwrap(a) for a in args]
        kw = {k: unwrap(v) for k, v in kwargs.items()}

        async def run() -> Any:
            out = fn(*values, **kw)
            return await out if inspect.isawaitable(out) else out

        value = await run() if pure else await self._session.journaled(step, "locally", run)
        return Located(frozenset({at}), self._here, value)

    async def comm(self, src: str, dst: str, value: Any) -> Located:
        """Send `value` from `src` to `dst`; returns it located at `dst`."""
        s, d = self._top(src), self._top(dst)
        if s == d:
            raise SelfSendError(f"comm from role {src!r} to itself in {self._chor.name!r}")
        self._step()
        if self._here == s:
            await self._session.send(d, Kind.DATA, unwrap(value))
            return Located(frozenset({d}), self._here)
        if self._here == d:
            return Located(frozenset({d}), self._here, await self._session.receive(s, Kind.DATA))
        return Located(frozenset({d}), self._here)

    async def broadcast(self, src: str, value: Any, to: Iterable[str] | None = None) -> Any:
        """Share a decision made at `src` with the roles in `to` (default: all others).

        Returns the plain value at `src` and at every role in `to`, so the choreography can
        use an ordinary `if`. Roles not in `to` receive no message; they get a `Choice` that
        resolves only if they learn the decision later from a message they receive.
        """
        s = self._top(src)
        targets = [r for r in self._to_top.values() if r != s] if to is None else []
        if to is not None:
            for r in to:
                t = self._top(r)
                if t == s:
                    raise SelfSendError(f"broadcast from role {src!r} to itself")
                if t not in targets:
                    targets.append(t)
        step = self._step()
        if self._here == s:
            v = unwrap(value)
            self._session.learn_choice(step, v)
            for t in targets:
                await self._session.send(t, Kind.CHOICE, v)
            return v
        if self._here in targets:
            v = await self._session.receive(s, Kind.CHOICE)
            self._session.learn_choice(step, v)
            return v
        return Choice(self._session, step, s)

    async def call(
        self, role: str, operation: str, payload: Any = None, *, key: str | None = None
    ) -> Located:
        """Invoke `operation` on the service next to `role`; returns the result at `role`.

        The idempotency key is "{session}:{key}" (default: the step number), the same on every
        retry and every replay. A 409 raises `BusinessAbort`; transient failures are retried.
        """
        at = self._top(role)
        step = self._step()
        if at != self._here:
            return Located(frozenset({at}), self._here)
        body = unwrap(payload)
        value = await self._session.call_service(step, operation, body, key or step)
        return Located(frozenset({at}), self._here, value)

    async def transact(self, role: str, txn: Transaction) -> Located:
        """Run saga step `txn` at `role`: commit now, compensate if the session aborts.

        A business abort of the commit aborts the whole session: every role then compensates
        its own transactions, in reverse order, exactly once.
        """
        at = self._top(role)
        step = self._step()
        if at != self._here:
            return Located(frozenset({at}), self._here)
        payload = unwrap(txn.payload)
        if isinstance(payload, dict):
            payload = {k: unwrap(v) for k, v in payload.items()}
        value = await self._session.transact(step, txn, payload)
        return Located(frozenset({at}), self._here, value)

    async def enclave(
        self,
        sub: Choreography,
        *args: Any,
        roles: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run choreography `sub` over a subset of this one's roles.

        `roles` maps `sub`'s role names to this choreography's (default: the same names).
        Roles outside the subset skip it entirely and get an absent `Located`.
        """
        mapping = dict(roles) if roles is not None else {r: r for r in sub.roles}
        missing = set(sub.roles) - set(mapping)
        if missing:
            raise UndeclaredRoleError(
                f"enclave {sub.name!r}: roles {sorted(missing)} are not mapped to roles of "
                f"{self._chor.name!r}"
            )
        to_top = {r: self._top(mapping[r]) for r in sub.roles}
        step = self._step()
        members = frozenset(to_top.values())
        if self._here not in members:
            return Located(members, self._here)
        child = Op(self._session, sub, to_top, prefix=f"{step}.")
        return await sub.fn(child, *args, **kwargs)
