#!/usr/bin/env python3
"""The container's health check: exit 0 when the node's ``/health`` answers ``ok``.

It reads the node's own settings (``WS_ADDR``, ``TLS_CERT``) from the environment the
node runs with, so a container started with another ``WS_ADDR`` is still checked on
the port the node listens on.  Docker reads exit 0 as healthy and 1 as unhealthy
(other codes are reserved), so every failure exits 1.
"""

from __future__ import annotations

import ssl
import sys
import urllib.request

import orjson

from timefast.settings import load

# A wildcard listen address is reached on the loopback of the same family.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def health_url() -> str:
    """The URL of ``/health`` on the node configured by the environment."""
    settings = load([])
    host, port = settings.ws_addr
    host = _LOOPBACK.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{host}:{port}/health"


def main() -> int:
    """Probe ``/health`` once; 0 if the node says ``ok``, else 1."""
    # The probe checks that this node answers, not who it is: its certificate names
    # the public host, never the loopback address the probe dials.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(health_url(), timeout=4, context=context) as reply:
            status = orjson.loads(reply.read()).get("status")
    except Exception as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    if status != "ok":
        print(f"unhealthy: status {status!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
