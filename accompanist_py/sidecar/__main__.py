"""`python -m accompanist_py.sidecar --config FILE.toml`: run one sidecar until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import ssl
import sys

from aiohttp import web

from accompanist_py import eventloop
from accompanist_py.errors import ChoreographyError, ConfigError
from accompanist_py.metrics import NodeMetrics, Reading
from accompanist_py.sidecar.app import Access, build_node, make_app
from accompanist_py.sidecar.config import SidecarConfig, load
from accompanist_py.sidecar.listener import GuardedSite

log = logging.getLogger("accompanist.sidecar")


async def serve(config_path: str) -> None:
    config = load(config_path)
    node = build_node(config)
    # Requests still open at shutdown are clients waiting for a session: they get a 503
    # at once (the node answers them), so a short grace is plenty.
    runner = web.AppRunner(
        make_app(node, Access.of(config), config.limits),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.limits.idle_s,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    try:
        site = GuardedSite(
            runner, config.host, config.port, config.limits, ssl_context=_server_context(config)
        )
        await site.start()
        _export_connections(node.metrics, site)
        if config.tls is None:
            log.warning(
                "sidecar %s: PLAINTEXT on %s, peers and clients are not authenticated; "
                "for development only (set [tls] to deploy)",
                config.name,
                config.host,
            )
        # Listening now: tell the peers again, so that their resends are not refused.
        await node.transport.announce_ready()
        eventloop.announce()
        log.info(
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


def _export_connections(metrics: NodeMetrics, site: GuardedSite) -> None:
    gate = site.gate

    def open_by_peer() -> dict[str, float]:
        # A peer is named by the URIs of its certificate; "none": connections without one.
        by_peer = {",".join(key): float(n) for key, n in gate.by_peer.items()}
        by_peer["none"] = float(gate.open - sum(gate.by_peer.values()))
        return by_peer

    metrics.add(
        Reading(
            "accompanist_connections_open",
            "Connections open to this sidecar, by the peer their certificate names.",
            open_by_peer,
            label="peer",
        )
    )
    metrics.add(
        Reading(
            "accompanist_connections_refused",
            "Connections closed for a limit, or for not sending a request in time once "
            "connected (a TLS handshake that fails or times out is closed by the TLS "
            "layer and not counted); a running count, kept under its earlier gauge name.",
            lambda: gate.refused,
        )
    )


def _server_context(config: SidecarConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    # Token clients come without a certificate: then one is optional at the TLS layer, and
    # the peer routes refuse a connection that has none (see Access.peer).
    return config.tls.server_context(require_client_cert=not config.tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accompanist_py.sidecar")
    parser.add_argument("--config", required=True, help="sidecar TOML file")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        eventloop.run(serve(args.config))
    except (ConfigError, ChoreographyError, ImportError, OSError, sqlite3.Error) as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
