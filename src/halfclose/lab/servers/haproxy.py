"""HAProxy in front of the built-in server: ``timeout http-keep-alive`` the lab's idle timeout.

HAProxy terminates TLS and HTTP/2 and keeps its own keep-alive connections to the built-in
server (HTTP/1.1 on loopback, idle for much longer), so every idle close the client sees is
HAProxy's. Over plain TCP HAProxy recognises HTTP/2's preface (h2c with prior knowledge).
"""

from __future__ import annotations

from halfclose.lab.servers import builtin
from halfclose.lab.servers.plan import Process, Site, listen_pairs

__all__ = ["BACKEND_PORT", "haproxy_config", "processes"]

#: The built-in server's port behind HAProxy (on loopback in the server namespace).
BACKEND_PORT = 8081


def _backend_port(site: Site) -> int:
    return BACKEND_PORT if site.port != BACKEND_PORT else BACKEND_PORT + 1


def haproxy_config(site: Site) -> str:
    ms = max(1, round(site.idle_timeout_s * 1000))
    bind = ""
    if site.tls is not None:
        alpn = "h2,http/1.1" if site.http2 else "http/1.1"
        version = f"TLSv{site.tls.version}"
        bind = f" ssl crt {site.tls.bundle} alpn {alpn} ssl-min-ver {version} ssl-max-ver {version}"
    bind += " tfo" if site.fast_open else ""  # TCP Fast Open on the listening socket
    binds = "\n".join(f"    bind {pair}{bind}" for pair in listen_pairs(site))
    # option nolinger: close client connections with RST (SO_LINGER 0), HAProxy's last-resort option.
    nolinger = "    option nolinger\n" if site.close_rst else ""
    announce = (f"    http-response set-header Keep-Alive timeout={max(1, int(site.idle_timeout_s))}\n"
                if site.keepalive_header else "")
    return f"""\
global
    maxconn 256
    log stderr format raw local0 warning

defaults
    mode http
    log global
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 60s
    timeout http-keep-alive {ms}ms

frontend lab
{binds}
{nolinger}{announce}    default_backend image

backend image
    http-reuse safe
    server builtin 127.0.0.1:{_backend_port(site)}
"""


def processes(site: Site) -> list[Process]:
    backend_site = Site(listen=("127.0.0.1",), port=_backend_port(site), idle_timeout_s=max(600.0, site.idle_timeout_s),
                        folder=site.folder, image=site.image, python=site.python)
    (backend,) = builtin.processes(backend_site, what="the built-in server behind haproxy")
    conf = site.folder / "haproxy.cfg"
    argv = ("haproxy", "-db", "-f", str(conf))
    return [backend, Process(what="haproxy", argv=argv, port=site.port, files={conf: haproxy_config(site)},
                             check=("haproxy", "-c", "-q", "-f", str(conf)))]
