"""Node.js: ``http.createServer`` / ``https`` / ``http2`` with ``keepAliveTimeout`` the lab's idle timeout.

The server script (``node_server.js`` next to this module) is Node's own HTTP stack with one
handler; over HTTP/2 the idle timer is ``server.setTimeout`` (Node has no other for sessions).
"""

from __future__ import annotations

import json
from pathlib import Path

from halfclose.lab.servers.plan import Process, Site

__all__ = ["SCRIPT", "processes"]

SCRIPT = Path(__file__).with_name("node_server.js")


def processes(site: Site) -> list[Process]:
    options: dict[str, object] = {
        "listen": list(site.listen),
        "port": site.port,
        "image": str(site.image),
        "keepAliveTimeout": max(1, round(site.idle_timeout_s * 1000)),
        "http2": site.http2,
        "tls": None,
    }
    if site.tls is not None:
        options["tls"] = {"cert": str(site.tls.cert), "key": str(site.tls.key), "version": f"TLSv{site.tls.version}"}
    return [Process(what="node", argv=("node", str(SCRIPT), json.dumps(options)), port=site.port, ready="ready")]
