"""`python -m accompanist_py.inspect`: draw one session across its sidecars, or serve a page.

    python -m accompanist_py.inspect SESSION (--sidecar URL ... | --config sidecar.toml)
        [--ca CA.pem] [--cert CLIENT.pem --key CLIENT-key.pem] [--token T | --token-file F]
        [--mermaid FILE] [--json]
    python -m accompanist_py.inspect serve (--sidecar URL ... | --config ...) [--port P]

Exit status: 0 with a diagram, 1 when no sidecar knew the session, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web

from accompanist_py.errors import ConfigError
from accompanist_py.inspect.mermaid import render_mermaid
from accompanist_py.inspect.sidecars import Credentials, Sidecars, urls_of_config
from accompanist_py.inspect.text import render_text
from accompanist_py.inspect.web import make_app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m accompanist_py.inspect",
        description="Merge a session's events from every sidecar and draw it as a sequence "
        "diagram; or `serve` a web page of recent sessions.",
    )
    p.add_argument("session", help="a session id, or 'serve' to serve the web page")
    where = p.add_argument_group("sidecars (one or more --sidecar, or a --config)")
    where.add_argument("--sidecar", action="append", default=[], metavar="URL")
    where.add_argument("--config", type=Path, help="a sidecar's TOML: its address and its peers'")
    auth = p.add_argument_group("client credentials (as for the sidecars' client routes)")
    auth.add_argument("--ca", type=Path, help="the deployment CA (default: the config's [tls] ca)")
    auth.add_argument("--cert", type=Path, help="a client certificate (PEM)")
    auth.add_argument("--key", type=Path, help="its private key")
    auth.add_argument("--token", help="a bearer token from a sidecar's [auth] tokens")
    auth.add_argument("--token-file", type=Path, help="a file holding the token")
    out = p.add_argument_group("output")
    out.add_argument("--mermaid", type=Path, metavar="FILE", help="also write a Mermaid diagram")
    out.add_argument("--json", action="store_true", help="print the merged timeline as JSON")
    out.add_argument("--timeout", type=float, default=10.0, help="seconds per sidecar request")
    srv = p.add_argument_group("serve")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8470)
    return p


def _sidecars(args: argparse.Namespace) -> Sidecars:
    urls, ca = list(args.sidecar), None
    if args.config is not None:
        named, ca = urls_of_config(args.config)
        urls += [u for u in named if u not in urls]
    if not urls:
        raise ConfigError("give the sidecars: --sidecar URL (repeatable) or --config FILE")
    if (args.cert is None) != (args.key is None):
        raise ConfigError("--cert and --key go together")
    if args.token and args.token_file:
        raise ConfigError("give --token or --token-file, not both")
    token = args.token_file.read_text().strip() if args.token_file else args.token
    creds = Credentials(args.ca or ca, args.cert, args.key, token or None)
    return Sidecars(urls, creds, timeout_s=args.timeout)


async def _inspect(args: argparse.Namespace, sidecars: Sidecars) -> int:
    async with sidecars:
        timeline = await sidecars.timeline(args.session)
    if args.mermaid is not None:
        args.mermaid.write_text(render_mermaid(timeline))
    if args.json:
        print(json.dumps(timeline.to_json(), indent=1))
    else:
        print(render_text(timeline), end="")
    if not timeline.entries:
        print(f"no sidecar knows session {args.session!r}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sidecars = _sidecars(args)
    except (ConfigError, OSError) as exc:
        print(f"inspect: {exc}", file=sys.stderr)
        return 2
    if args.session == "serve":
        print(f"inspector on http://{args.host}:{args.port}/ for {', '.join(sidecars.urls)}")
        web.run_app(make_app(sidecars), host=args.host, port=args.port, print=None)
        return 0
    return asyncio.run(_inspect(args, sidecars))


if __name__ == "__main__":
    sys.exit(main())
