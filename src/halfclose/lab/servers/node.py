"""Node.js: ``http.createServer`` / ``https`` / ``http2``, closing idle connections at the lab's idle timeout.

The server script (``node_server.js`` next to this module) is Node's own HTTP stack with one
handler. Node 20 closes an idle HTTP/1.1 connection 1 s after its ``keepAliveTimeout``
(``HTTP_SERVER_KEEP_ALIVE_TIMEOUT_BUFFER``, while it announces ``Keep-Alive: timeout=`` the
knob), so the knob is set to the idle timeout minus that second: the connection is closed at the
idle timeout, as with every other lab server. Over HTTP/2 the idle timer is ``server.setTimeout``
(Node has no other for sessions), which closes at its value.
"""

from __future__ import annotations

import json
from pathlib import Path

from halfclose.lab.servers.plan import Process, Site

__all__ = ["KEEP_ALIVE_BUFFER_S", "SCRIPT", "processes"]

SCRIPT = Path(__file__).with_name("node_server.js")
#: How much later than ``keepAliveTimeout`` Node 20 closes an idle HTTP/1.1 connection.
KEEP_ALIVE_BUFFER_S = 1.0


def processes(site: Site) -> list[Process]:
    options: dict[str, object] = {
        "listen": list(site.listen),
        "port": site.port,
        "image": str(site.image),
        "keepAliveTimeout": max(1, round((site.idle_timeout_s - KEEP_ALIVE_BUFFER_S) * 1000)),
        "sessionTimeout": max(1, round(site.idle_timeout_s * 1000)),
        "http2": site.http2,
        "tls": None,
    }
    if site.tls is not None:
        options["tls"] = {"cert": str(site.tls.cert), "key": str(site.tls.key), "version": f"TLSv{site.tls.version}"}
    return [Process(what="node", argv=("node", str(SCRIPT), json.dumps(options)), port=site.port, ready="ready")]
