"""The container health check: `GET /health` of the sidecar in this container, asked as a peer.

    python /opt/accompanist/healthcheck.py [--config FILE]
    python /opt/accompanist/healthcheck.py --url URL [--ca CA --cert CERT --key KEY]

Exit status 0 when `/health` answers 200 with `{"status": "ok", ...}`, 1 otherwise, with one
line on stderr saying why. The first form reads the sidecar's own TOML (`--config`, default
`$ACCOMPANIST_CONFIG` or `/etc/accompanist/sidecar.toml`, the file the image's default command
runs) and asks the address it listens on (127.0.0.1 for a wildcard address). The second asks
any `/health`, e.g. a workload service's, which with `--tls-*` also needs a certificate from the
deployment CA (it accepts the service's own).

With `[tls]` the sidecar serves HTTPS, and unless `[auth]` has tokens its handshake demands a
client certificate from the deployment CA: a probe without one (curl, a kubelet `httpGet`) is
refused before it says a word of HTTP, and a probe that skips verifying the server would pass
for any listener on the port. So this check connects as the sidecar's peers do: it verifies the
sidecar's certificate against the CA and the host name, and presents the sidecar's own
certificate (a peer certificate, so the answer carries the node's details too). It passes only
for a sidecar that is up, speaks TLS with the deployment's certificate, and answers.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_CONFIG = "/etc/accompanist/sidecar.toml"
WILDCARDS = ("", "0.0.0.0", "::")


def client_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Verifies the server against `ca` and its host name, and presents `cert` if given."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def sidecar_probe(config_path: str) -> tuple[str, ssl.SSLContext | None]:
    """The `/health` URL of the sidecar configured in `config_path`, and how to connect to it.

    Only `listen` and `[tls]` are read (docs/contracts.md; relative paths are relative to the
    file), with the standard library alone: a check every few seconds must not pay for
    importing the runtime (about 0.9 s of CPU against 0.1 s).
    """
    path = Path(config_path)
    config = tomllib.loads(path.read_text())
    host, _, port = str(config.get("listen", "")).rpartition(":")
    host = host.strip("[]")
    host = "127.0.0.1" if host in WILDCARDS else host
    if ":" in host:
        host = f"[{host}]"
    tls = config.get("tls")
    if not tls:
        return f"http://{host}:{port}/health", None
    ca, cert, key = (str(path.parent / tls[name]) for name in ("ca", "cert", "key"))
    return f"https://{host}:{port}/health", client_context(ca, cert, key)


def probe(url: str, context: ssl.SSLContext | None, timeout: float) -> str | None:
    """None if `url` answers 200 with status ok, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        return f"{url} answered {error.code}"
    except (OSError, ValueError) as error:
        return f"{url}: {error}"
    # A sidecar says {"status": "ok"}, a workload service {"service": ..., "ok": true}.
    if isinstance(body, dict) and (body.get("status") == "ok" or body.get("ok") is True):
        return None
    return f"{url} answered {body!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.environ.get("ACCOMPANIST_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--url", help="probe this /health URL instead of the sidecar's")
    parser.add_argument("--ca", help="the CA that signed the server's certificate")
    parser.add_argument("--cert", help="the certificate to present")
    parser.add_argument("--key", help="its key")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.url is not None:
        url = args.url
        context = client_context(args.ca, args.cert, args.key) if args.ca or args.cert else None
    else:
        try:
            url, context = sidecar_probe(args.config)
        except (OSError, ValueError, KeyError, TypeError, tomllib.TOMLDecodeError) as error:
            print(f"unhealthy: {error}", file=sys.stderr)
            return 1
    problem = probe(url, context, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
