"""`python -m accompanist_py.sidecar --config FILE.toml`: run one sidecar until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys

from aiohttp import web

from accompanist_py.errors import ChoreographyError, ConfigError
from accompanist_py.sidecar.app import build_node, make_app
from accompanist_py.sidecar.config import load


async def serve(config_path: str) -> None:
    config = load(config_path)
    node = build_node(config)
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # Requests still open at shutdown are clients waiting for a session: they get a 503
        # at once (the node answers them), so a short grace is plenty.
        site = web.TCPSite(
            runner, config.host, config.port, reuse_address=True, shutdown_timeout=5.0
        )
        await site.start()
        # Listening now: tell the peers again, so that their resends are not refused.
        await node.transport.announce_ready()
        logging.getLogger("accompanist.sidecar").info(
            "sidecar %s (%s) listening on %s:%d, mode %s",
            config.name,
            ", ".join(config.roles),
            config.host,
            config.port,
            config.mode,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()  # graceful: stops accepting, closes the node and its store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accompanist_py.sidecar")
    parser.add_argument("--config", required=True, help="sidecar TOML file")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
        runner = asyncio.run
    try:
        runner(serve(args.config))
    except (ConfigError, ChoreographyError, ImportError, OSError, sqlite3.Error) as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
