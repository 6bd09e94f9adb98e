"""Located values: a value that exists at some roles of a choreography and nowhere else.

Every role runs the same choreography function, so every role holds a `Located` object for
each value; only the owners hold the value itself. Reading it elsewhere is a programming
error that the runtime reports at once, naming both the owners and the reading role.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from accompanist_py.errors import AbsentValueError

T = TypeVar("T")

_ABSENT: Any = object()


class Located(Generic[T]):
    """A value located at `owners`, as seen from the role `here`."""

    __slots__ = ("_here", "_owners", "_value")

    def __init__(self, owners: frozenset[str], here: str, value: T = _ABSENT) -> None:
        self._owners = owners
        self._here = here
        self._value = value if here in owners else _ABSENT

    @property
    def owners(self) -> frozenset[str]:
        """The roles at which this value exists."""
        return self._owners

    @property
    def is_here(self) -> bool:
        """True at the roles that own the value."""
        return self._value is not _ABSENT

    @property
    def value(self) -> T:
        """The value itself; raises `AbsentValueError` at a role that does not own it."""
        if self._value is _ABSENT:
            raise AbsentValueError(
                f"value located at {_names(self._owners)} was read at role {self._here!r}"
            )
        return self._value

    def __bool__(self) -> bool:
        # A plain `if located:` would silently test the wrapper, not the value: refuse it.
        raise AbsentValueError(
            f"a located value (at {_names(self._owners)}) cannot be branched on directly at "
            f"role {self._here!r}; share the decision with op.broadcast(...) first"
        )

    def __repr__(self) -> str:
        shown = repr(self._value) if self.is_here else "<absent>"
        return f"Located({_names(self._owners)}, here={self._here!r}, {shown})"


def _names(roles: frozenset[str]) -> str:
    return ", ".join(repr(r) for r in sorted(roles))


def unwrap(value: Any) -> Any:
    """Return the value inside `value` if it is `Located`, else `value` itself."""
    return value.value if isinstance(value, Located) else value
