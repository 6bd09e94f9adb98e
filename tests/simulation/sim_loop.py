"""The simulated world's clock and scheduler: a deterministic, virtual-time asyncio event loop.

`SimLoop` is an ordinary asyncio event loop whose clock is a number it advances itself: when
no callback is ready, the selector's `select(timeout)` jumps the clock to the next timer
instead of sleeping, so an hour of `asyncio.sleep` costs microseconds and nothing real (no
socket, no thread, no file) is ever waited on. With every random choice drawn from seeded
generators, the same seed replays the same run, event for event.

The loop also knows which simulated node each task belongs to. The harness sets the context
variable `OWNER` (the node's current `Incarnation`) around a node's start and its deliveries;
the task factory tags every new task with the value it sees in the task's context, so a crash
can cancel exactly the tasks of the dead incarnation, and a task the dead code tries to create
later is cancelled at birth. `Trace` is the run's event log; its hash is what "the same run"
means.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import itertools
import sys
import time as _real_time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any


class NodeCrashed(BaseException):
    """Raised into code of a crashed node that tries to reach its disk, network or service.

    A BaseException, so that the runtime's `except Exception` handlers (which would log,
    retry or compensate) cannot swallow it: dead code must simply stop.
    """


class SimulationStalled(Exception):
    """Nothing is ready and no timer is set, yet the simulation is waiting: a deadlock."""


class Incarnation:
    """One life of a simulated node: from a (re)start to the next crash."""

    def __init__(self, node: str, generation: int) -> None:
        self.node = node
        self.generation = generation
        self.alive = True
        self.tasks: dict[int, asyncio.Task[Any]] = {}  # by creation number, until done

    def check(self) -> None:
        """Raise `NodeCrashed` if this incarnation is dead (for I/O seams of the harness)."""
        if not self.alive:
            raise NodeCrashed(f"{self} is dead")

    def __repr__(self) -> str:
        return f"{self.node}#{self.generation}"


OWNER: contextvars.ContextVar[Incarnation | None] = contextvars.ContextVar(
    "sim_owner", default=None
)


def owner_context(owner: Incarnation | None) -> contextvars.Context:
    """A fresh context in which `OWNER` is `owner`: tasks created with it belong to `owner`."""
    ctx = contextvars.Context()
    ctx.run(OWNER.set, owner)
    return ctx


class SimTask(asyncio.Task):  # type: ignore[type-arg]
    """A task that remembers its owner and its creation number (for a stable cancel order)."""

    owner: Incarnation | None
    number: int
    # Set by the harness on tasks whose exception it retrieves itself.
    handled = False


class _VirtualSelector:
    """Stands in for the loop's selector: waiting for I/O is advancing the clock."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            # No ready callback and no timer: nothing can ever happen again.
            raise SimulationStalled(f"nothing scheduled at t={self._loop.time():.6f}")
        if timeout > 0:
            self._loop.advance(timeout)
        return []

    def close(self) -> None:
        pass


class SimLoop(asyncio.BaseEventLoop):
    """An event loop on virtual time; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._selector = _VirtualSelector(self)
        self._now = 0.0
        self._clock_resolution = 1e-9
        self._numbers = itertools.count()
        self.task_errors: list[tuple[float, Incarnation | None, str]] = []
        self.set_task_factory(self._make_task)  # type: ignore[arg-type]
        self.set_exception_handler(self._on_loop_error)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (only the selector does this: time passes when idle)."""
        self._now += seconds

    # BaseEventLoop's hooks for real I/O: there is none.
    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def _make_task(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> SimTask:
        owner = context.get(OWNER) if context is not None else OWNER.get()
        task = SimTask(coro, loop=loop, context=context)
        task.owner = owner
        task.number = next(self._numbers)
        if owner is not None:
            if not owner.alive:
                # Leftover code of a crashed node (a timer, a callback) tried to start work.
                task.cancel()
            else:
                owner.tasks[task.number] = task
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        assert isinstance(task, SimTask)
        owner = task.owner
        if owner is not None:
            owner.tasks.pop(task.number, None)
        if task.cancelled() or task.handled:
            return
        exc = task.exception()
        if exc is None or isinstance(exc, NodeCrashed):
            return
        if owner is not None and not owner.alive:
            return  # dead code failing on its way out: that is the crash, not a bug
        # A task of a live node died of an error nobody handles: a runtime bug to report.
        self.task_errors.append((self._now, owner, f"{type(exc).__name__}: {exc}"))

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, NodeCrashed):
            return
        message = str(context.get("message", ""))
        if "never retrieved" in message or "destroyed but it is pending" in message:
            return  # reported by _task_done already, or a dead task garbage-collected
        # A failing callback is reported outside its context: find its owner through it.
        ctx = getattr(context.get("handle"), "_context", None)
        owner = ctx.get(OWNER) if ctx is not None else OWNER.get()
        if owner is not None and not owner.alive:
            return
        detail = f"{message}: {type(exc).__name__}: {exc}" if exc is not None else message
        self.task_errors.append((self._now, owner, detail))

    def cancel_tasks_of(self, owner: Incarnation) -> int:
        """Cancel every unfinished task of `owner`, oldest first; returns how many."""
        tasks = [owner.tasks[n] for n in sorted(owner.tasks)]
        for t in tasks:
            t.cancel()
        return len(tasks)


class Trace:
    """The run's event log: one line per event, hashed as it grows."""

    def __init__(self, loop: SimLoop, keep: bool = True) -> None:
        self._loop = loop
        self._hash = hashlib.sha256()
        self.keep = keep
        self.lines: list[str] = []
        self.count = 0

    def __call__(self, kind: str, text: str) -> None:
        line = f"{self._loop.time():12.6f} {kind:<8} {text}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.count += 1
        if self.keep:
            self.lines.append(line)

    def digest(self) -> str:
        return self._hash.hexdigest()


class _VirtualTime:
    """A stand-in for the `time` module whose clocks read the simulation's virtual time."""

    EPOCH = 1_700_000_000.0  # time.time() of virtual t=0: a plausible wall-clock value

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self.EPOCH + self._loop.time()

    def time_ns(self) -> int:
        return int(self.time() * 1e9)

    def monotonic(self) -> float:
        return self._loop.time()

    def perf_counter(self) -> float:
        return self._loop.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)


def _clock_swaps(value: Any, shim: _VirtualTime) -> Any:
    """What to put in place of `value` if it is the real `time` module or one of its clocks."""
    if value is _real_time:
        return shim
    if value is _real_time.time:
        return shim.time
    if value is _real_time.monotonic:
        return shim.monotonic
    return None


@contextlib.contextmanager
def virtual_clock(loop: SimLoop, package: str = "accompanist_py") -> Iterator[_VirtualTime]:
    """Make the runtime's own `time.time()`/`time.monotonic()` read virtual time.

    The runtime reads the `time` module for ages, durations and deadlines (where it takes no
    clock parameter). Deadlines on the wall clock would never expire in a run that takes
    milliseconds of real time, and would make runs differ; so for the run, the `time` globals
    of every module of `package`, and the `time.time` default factories of its dataclasses
    (bound when the class was made), are swapped for virtual ones. Yields the virtual clock,
    for the seams that do take one.
    """
    shim = _VirtualTime(loop)
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    cells: list[tuple[Any, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        namespace = vars(module)
        for attr, value in list(namespace.items()):
            replacement = _clock_swaps(value, shim)
            if replacement is not None:
                swapped.append((namespace, attr, value))
                namespace[attr] = replacement
            elif isinstance(value, type) and value.__module__ == name:
                # A dataclass's generated __init__ holds its default factories in closure cells.
                init = vars(value).get("__init__")
                for cell in getattr(init, "__closure__", None) or ():
                    try:
                        contents = cell.cell_contents
                    except ValueError:  # an empty cell
                        continue
                    replacement = _clock_swaps(contents, shim)
                    if replacement is not None:
                        cells.append((cell, contents))
                        cell.cell_contents = replacement
    try:
        yield shim
    finally:
        for namespace, attr, value in swapped:
            namespace[attr] = value
        for cell, contents in cells:
            cell.cell_contents = contents


def run_in(loop: SimLoop, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run `main()` to completion on `loop`, then cancel what is left and close the loop."""
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main())
    finally:
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        leftover.sort(key=lambda t: getattr(t, "number", 0))
        for t in leftover:
            t.cancel()
        if leftover:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        asyncio.set_event_loop(None)
        loop.close()
