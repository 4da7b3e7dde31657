"""Caddy 2: a JSON config whose server ``idle_timeout`` is the lab's idle timeout.

No admin endpoint, no automatic HTTPS, no HTTP/3; with TLS the run's certificate is loaded from
its files and the one TLS version set as both minimum and maximum. Caddy's data and config
folders (``XDG_*``, ``HOME``) point into the run's work folder, so nothing is written elsewhere.
"""

from __future__ import annotations

import json

from halfclose.lab.servers.plan import Process, Site, listen_pairs

__all__ = ["caddy_config", "processes"]


def caddy_config(site: Site) -> dict[str, object]:
    ms = max(1, round(site.idle_timeout_s * 1000))
    if site.tls is not None:
        protocols = ["h1", "h2"] if site.http2 else ["h1"]
    else:
        protocols = ["h1", "h2c"] if site.http2 else ["h1"]
    server: dict[str, object] = {
        "listen": listen_pairs(site),
        "idle_timeout": f"{ms}ms",
        "protocols": protocols,
        "automatic_https": {"disable": True},
        "routes": [{
            "handle": [
                {"handler": "headers", "response": {"set": {"Cache-Control": ["no-store"]}}},
                {"handler": "rewrite", "uri": f"/{site.image.name}"},
                {"handler": "file_server", "root": str(site.image.parent)},
            ],
        }],
    }
    apps: dict[str, object] = {"http": {"servers": {"lab": server}}}
    if site.tls is not None:
        version = f"tls{site.tls.version}"
        server["tls_connection_policies"] = [{
            "protocol_min": version,
            "protocol_max": version,
            "alpn": ["h2", "http/1.1"] if site.http2 else ["http/1.1"],
        }]
        apps["tls"] = {"certificates": {"load_files": [{"certificate": str(site.tls.cert), "key": str(site.tls.key)}]}}
        apps["http"] = {"https_port": site.port, "servers": {"lab": server}}
    else:
        apps["http"] = {"http_port": site.port, "servers": {"lab": server}}
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        # INFO: the line "serving initial configuration" is the ready signal.
        "logging": {"logs": {"default": {"level": "INFO"}}},
        "storage": {"module": "file_system", "root": str(site.folder / "caddy-data")},
        "apps": apps,
    }


def processes(site: Site) -> list[Process]:
    conf = site.folder / "caddy.json"
    home = site.folder / "caddy-home"
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    return [Process(what="caddy", argv=("caddy", "run", "--config", str(conf)), port=site.port,
                    files={conf: json.dumps(caddy_config(site), indent=2)}, env=env,
                    ready="serving initial configuration...")]
