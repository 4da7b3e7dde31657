"""Server names from the first bytes a client sends: TLS SNI and the HTTP Host header.

Pure functions over bytes; a payload that is neither, or is cut short by the snap length, gives
``None`` (never an exception).
"""

from __future__ import annotations

import enum
import re

__all__ = ["NameSource", "host_header", "name_from_payload", "tls_sni"]


@enum.unique
class NameSource(enum.StrEnum):
    """Where a connection's server name came from."""

    TLS_SNI = "tls_sni"
    HTTP_HOST = "http_host"
    DNS = "dns"


_METHOD = re.compile(rb"^(GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH|CONNECT|TRACE) \S+ HTTP/1\.[01]\r\n")
_HOST = re.compile(rb"\r\nhost:[ \t]*([^\r\n]+)", re.IGNORECASE)


def host_header(data: bytes) -> str | None:
    """The Host header of an HTTP/1.x request at the start of *data*, without a port."""
    if not _METHOD.match(data):
        return None
    head = data.split(b"\r\n\r\n", 1)[0]
    m = _HOST.search(head)
    if m is None:
        return None
    host = m.group(1).strip().decode("ascii", "replace")
    if host.startswith("["):  # [v6]:port
        return host[1:].split("]", 1)[0] or None
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.lower() or None


def tls_sni(data: bytes) -> str | None:
    """The server_name (RFC 6066 section 3) of a TLS ClientHello at the start of *data*."""
    try:
        if len(data) < 5 or data[0] != 0x16 or data[5] != 0x01:
            return None
        p = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random
        p += 1 + data[p]  # session id
        p += 2 + int.from_bytes(data[p : p + 2], "big")  # cipher suites
        p += 1 + data[p]  # compression methods
        ext_end = p + 2 + int.from_bytes(data[p : p + 2], "big")
        p += 2
        while p + 4 <= min(ext_end, len(data)):
            etype = int.from_bytes(data[p : p + 2], "big")
            elen = int.from_bytes(data[p + 2 : p + 4], "big")
            p += 4
            if etype == 0:
                q = p + 2
                while q + 3 <= p + elen:
                    ntype = data[q]
                    nlen = int.from_bytes(data[q + 1 : q + 3], "big")
                    name = data[q + 3 : q + 3 + nlen]
                    if ntype == 0 and len(name) == nlen:
                        return name.decode("ascii", "replace").lower().rstrip(".") or None
                    q += 3 + nlen
                return None
            p += elen
    except IndexError:
        return None
    return None


def name_from_payload(data: bytes) -> tuple[str, NameSource] | None:
    """A server name from a client's first bytes: SNI first, then the Host header."""
    sni = tls_sni(data)
    if sni is not None:
        return sni, NameSource.TLS_SNI
    host = host_header(data)
    if host is not None:
        return host, NameSource.HTTP_HOST
    return None
