"""Apache httpd 2.4 (Debian's apache2): mpm_event, ``KeepAliveTimeout`` the lab's idle timeout.

A self-contained configuration (none of /etc/apache2 is read): the modules it needs, the image
at every path, mod_ssl and mod_http2 as asked. Apache refuses to serve as root, so its children
run as ``www-data`` and read the image from the run's work folder.
"""

from __future__ import annotations

from halfclose.lab.servers.plan import Process, Site, listen_pairs

__all__ = ["apache_config", "processes"]

MODULES = "/usr/lib/apache2/modules"


def apache_config(site: Site) -> str:
    """httpd.conf for the lab (``KeepAliveTimeout`` in ms; HTTP/2's idle timeout follows it on mpm_event)."""
    modules = ["mpm_event", "authz_core", "alias", "headers"]
    if site.tls is not None:
        modules += ["socache_shmcb", "ssl"]
    if site.http2:
        modules += ["http2"]
    run = site.folder
    ms = max(1, round(site.idle_timeout_s * 1000))
    lines = [f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in modules]
    lines += [
        f"ServerRoot {run}",
        f"DefaultRuntimeDir {run}",
        f"PidFile {run}/apache2.pid",
        f"Mutex file:{run} default",
        "ServerName lab",
        "User www-data",
        "Group www-data",
        "ErrorLog /dev/stderr",
        # notice: the line saying it runs ("resuming normal operations") is the ready signal.
        "LogLevel notice",
        "KeepAlive On",
        f"KeepAliveTimeout {ms}ms",
        "MaxKeepAliveRequests 0",
        "Timeout 60",
        "StartServers 1",
        "ServerLimit 1",
        "ThreadsPerChild 25",
        "MaxRequestWorkers 25",
        "MinSpareThreads 1",
        "MaxSpareThreads 25",
        *[f"Listen {pair}" for pair in listen_pairs(site)],
        f'DocumentRoot "{site.image.parent}"',
        f'<Directory "{site.image.parent}">',
        "    Require all granted",
        "</Directory>",
        f'AliasMatch "^/" "{site.image}"',
        "ForceType image/png",
        'Header always set Cache-Control "no-store"',
    ]
    if site.tls is not None:
        lines += [
            "SSLEngine on",
            f"SSLCertificateFile {site.tls.cert}",
            f"SSLCertificateKeyFile {site.tls.key}",
            f"SSLProtocol -all +TLSv{site.tls.version}",
            f"SSLSessionCache shmcb:{run}/ssl_scache(512000)",
        ]
    if site.http2:
        lines.append("Protocols h2 http/1.1" if site.tls is not None else "Protocols h2c http/1.1")
    return "\n".join(lines) + "\n"


def processes(site: Site) -> list[Process]:
    conf = site.folder / "apache2.conf"
    argv = ("apache2", "-f", str(conf), "-DFOREGROUND")
    return [Process(what="apache2", argv=argv, port=site.port, files={conf: apache_config(site)},
                    check=("apache2", "-f", str(conf), "-t"), ready="resuming normal operations...")]
