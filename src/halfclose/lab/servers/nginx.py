"""nginx: a generated configuration whose ``keepalive_timeout`` is the lab's idle timeout."""

from __future__ import annotations

import signal

from halfclose.lab.servers.plan import Process, Site, listen_pairs

__all__ = ["nginx_config", "processes"]


def nginx_config(site: Site) -> str:
    """An nginx configuration: the image at every path, the idle timeout, TLS and HTTP/2 as asked.

    nginx 1.22 uses ``keepalive_timeout`` for idle HTTP/2 connections too; ``listen ... http2``
    without ``ssl`` is h2c with prior knowledge only (no HTTP/1.1 on that port); ``fastopen=16``
    accepts data in the SYN (TCP Fast Open, a queue of 16 pending ones).
    """
    flags = (" ssl" if site.tls else "") + (" http2" if site.http2 else "") + (" fastopen=16" if site.fast_open else "")
    listens = "\n".join(f"        listen {pair}{flags};" for pair in listen_pairs(site))
    tls = ""
    if site.tls is not None:
        tls = (f"        ssl_certificate {site.tls.cert};\n        ssl_certificate_key {site.tls.key};\n"
               f"        ssl_protocols TLSv{site.tls.version};\n")
    ms = max(1, round(site.idle_timeout_s * 1000))
    # keepalive_timeout's second parameter is the Keep-Alive: timeout=N header nginx sends.
    header = f" {max(1, int(site.idle_timeout_s))}s" if site.keepalive_header else ""
    run = site.folder
    return f"""\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {run}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    keepalive_timeout {ms}ms{header};
    keepalive_requests 10000;
    default_type image/png;
    server {{
{listens}
{tls}        root {site.image.parent};
        add_header Cache-Control no-store always;
        location / {{ try_files /{site.image.name} =404; }}
    }}
}}
"""


def processes(site: Site) -> list[Process]:
    conf = site.folder / "nginx.conf"
    # nginx says nothing when it starts; `-t` first turns a bad config or a busy port into a message.
    return [Process(what="nginx", argv=("nginx", "-c", str(conf)), port=site.port, files={conf: nginx_config(site)},
                    check=("nginx", "-t", "-q", "-c", str(conf)), stop_signal=signal.SIGQUIT)]
