"""The one way every Python process of a deployment runs its event loop: uvloop.

A comparison of runtimes is only fair if they run on the same event loop, so the sidecar, the
benchmark gateway and the Temporal workers all start through :func:`run` (the workload services,
which never import the runtime, do the same by hand). Once a process serves, it calls
:func:`announce`, which prints one line, ``event loop: <name>`` (``uvloop`` or ``asyncio``), on
standard output, so that whoever reads the process's log can tell which loop it really had,
rather than which one it was meant to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ANNOUNCEMENT = "event loop: "


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the package the loop's class comes from."""
    return type(loop).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh uvloop loop (plain asyncio if uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; stay runnable without it all the same
        return asyncio.run(main)
    return uvloop.run(main)


def announce() -> None:
    """Print which loop runs this process (call it from the loop, once the process serves)."""
    print(f"{ANNOUNCEMENT}{loop_name(asyncio.get_running_loop())}", flush=True)
