"""A baseline's server binary as a child process: started, stopped, crashed and restarted.

The Temporal dev server and the Restate server are both single binaries that keep their state
in files, so that the harness can kill one with SIGKILL and start it again on the same ports
and data. `ServerProcess` is that life cycle, once, on `launch`'s process backend: the binary
runs in its own process group (a Ctrl-C meant for the harness reaches it through us, in order)
with its output appended to a log file; `stop` is SIGTERM then SIGKILL after a grace period,
`kill` is SIGKILL and nothing else (both to every process of the group and every descendant,
and both reap), and a subclass says how to run it (`command`, `prepare`) and when it is ready
(`wait_ready`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from types import TracebackType
from typing import Self

from launch import ProcessSpec
from launch.process import HostProcess, ProcessBackend


class ServerProcess:
    """One server process with a log file; use `start`/`stop`, or `async with`."""

    def __init__(self, log_file: str | os.PathLike[str]) -> None:
        self.log_file = Path(log_file)
        self.process: HostProcess | None = None
        self._starts = 0

    def command(self) -> list[str]:
        """The exact command line, for logs and reports."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create what the server needs before each start (folders, a config file)."""

    async def wait_ready(self) -> None:
        """Return once clients can use the server; raise if it will not get there."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for the crash injector)."""
        return self.process.pid if self.process and self.process.poll() is None else None

    async def start(self) -> None:
        """Start the server (if it is not running) and return once it is ready."""
        if self.pid is not None:
            return
        if self.process is not None:
            self.process.stop(signal.SIGKILL, 0.0)  # it died: reap whatever it left behind
        self.prepare()
        self._starts += 1
        spec = ProcessSpec(self.log_file.stem, self.command())
        self.process = ProcessBackend().launch(spec, self.log_file, self._starts)
        await self.wait_ready()

    def exited(self) -> str | None:
        """Why the process is gone while it should be starting (None while it runs)."""
        code = None if self.process is None else self.process.poll()
        return None if code is None else f"exited with {code}; see {self.log_file}"

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s` seconds."""
        process, self.process = self.process, None
        if process is not None:
            await asyncio.to_thread(process.stop, signal.SIGTERM, grace_s)

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash looks like to the server."""
        process, self.process = self.process, None
        if process is not None:
            process.stop(signal.SIGKILL, 0.0)

    async def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with `crash=True`) and start again on the same ports and data."""
        if crash:
            self.kill()
        else:
            await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


__all__ = ["ServerProcess"]
