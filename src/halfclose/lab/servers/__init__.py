"""The lab's servers: the built-in HTTP and DNS servers, and the real servers' generated configs.

Each HTTP server kind (:class:`~halfclose.lab.config.ServerKind`) has a module that turns a
:class:`~halfclose.lab.servers.plan.Site` into the processes to start (:func:`processes`):
the real program with a config whose idle timeout is the lab's. The built-in servers run as
``python -m halfclose.lab.servers http|dns|uvicorn ...`` inside the server namespace; each prints
``ready`` on stderr once it listens, and an error line (and exits 2) when it cannot.
"""

from __future__ import annotations

from collections.abc import Callable

from halfclose.lab.config import ServerKind
from halfclose.lab.servers import apache, builtin, caddy, go, haproxy, nginx, node, uvicorn
from halfclose.lab.servers.builtin import HttpServerOptions
from halfclose.lab.servers.dns import DnsAnswers, dnsmasq_argv
from halfclose.lab.servers.image import IMAGE_HEADERS, IMAGE_PATH, lab_image
from halfclose.lab.servers.nginx import nginx_config
from halfclose.lab.servers.plan import Process, Site, Tls

__all__ = [
    "IMAGE_HEADERS",
    "IMAGE_PATH",
    "PROGRAMS",
    "DnsAnswers",
    "HttpServerOptions",
    "Process",
    "Site",
    "Tls",
    "dnsmasq_argv",
    "lab_image",
    "nginx_config",
    "processes",
]

_PLANS: dict[ServerKind, Callable[[Site], list[Process]]] = {
    ServerKind.BUILTIN: builtin.processes,
    ServerKind.NGINX: nginx.processes,
    ServerKind.APACHE: apache.processes,
    ServerKind.HAPROXY: haproxy.processes,
    ServerKind.NODE: node.processes,
    ServerKind.CADDY: caddy.processes,
    ServerKind.UVICORN: uvicorn.processes,
    ServerKind.GO: go.processes,
}

#: The programs each server needs on the host (the Go server's: to build it when not cached).
PROGRAMS: dict[ServerKind, tuple[str, ...]] = {
    ServerKind.BUILTIN: (),
    ServerKind.NGINX: ("nginx",),
    ServerKind.APACHE: ("apache2",),
    ServerKind.HAPROXY: ("haproxy",),
    ServerKind.NODE: ("node",),
    ServerKind.CADDY: ("caddy",),
    ServerKind.UVICORN: (),
    ServerKind.GO: ("go",),
}


def processes(kind: ServerKind, site: Site) -> list[Process]:
    """The processes that make up server *kind* at *site*, in start order."""
    return _PLANS[kind](site)
